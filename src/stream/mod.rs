//! Turning state changes into SSE messages.
//!
//! Every stream speaks the same protocol (docs/api.md): a `retry:` hint, `event: snapshot`
//! with the current state, `event: update` on each change, and `event: end` with a reason
//! once there is nothing more to say. All SSE formatting lives in [`sse`].
//!
//! Every stream runs in one [`driver`]: it owns the writes, the access gate, the deadlines
//! (token expiry, lifetime, keep-alive: one timer) and shutdown. What a stream watches is its
//! *source*: [`items`] (one run, one pack, or a set of both, ending once all are terminal) or
//! [`workspace`] (the workspace feed, which never ends because runs finish), or [`combined`]
//! (items and a feed on one `/v1/streams` stream). Sources only say
//! what changed, whether the stream's access decisions cover it, and how it renders.
//! [`sink`] is the driver's fast path: the watcher writes a single item's update straight
//! into the socket, through the same gate.
//!
//! Streams read the hub's cells and never talk to the listener.

pub(crate) mod combined;
pub(crate) mod driver;
pub(crate) mod items;
pub(crate) mod limits;
pub(crate) mod sink;
pub(crate) mod sse;
pub(crate) mod workspace;

use crate::access::token::now_secs;
use crate::access::{AccessError, Batcher, Epochs};
use crate::metrics::{CloseReason, KindLabel, Metrics, ReasonLabel, StreamKind};
use crate::watch::hub::Hub;
use limits::{StreamLimiter, StreamPermit};
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub(crate) use driver::{Out, Stream};

/// Everything streams need, cheap to clone.
#[derive(Clone)]
pub(crate) struct Streams {
    pub hub: Arc<Hub>,
    pub epochs: Arc<Epochs>,
    /// Batches the access reads of streams opened (or re-checked) together.
    pub batcher: Arc<Batcher>,
    pub limiter: Arc<StreamLimiter>,
    pub metrics: Arc<Metrics>,
    /// Cancelled at shutdown: every open stream ends (without `end`, so clients reconnect to
    /// another instance).
    pub shutdown: CancellationToken,
    pub keepalive: Duration,
    /// How long a client may take none of a stream's bytes (see `sink`).
    pub write_timeout: Duration,
    pub max_lifetime_secs: u64,
}

impl Streams {
    /// A place under the stream caps for `user_id`, for a stream's life or a JSON snapshot's
    /// read, taken before any database work, so an over-limit client costs nothing. Every
    /// read made for a client is made under one, so the caps bound the read queues too.
    pub(crate) fn permit(&self, user_id: i64) -> Result<StreamPermit, OpenError> {
        self.limiter.acquire(user_id).inspect_err(|_| {
            self.metrics.streams_rejected.inc();
        })
    }
}

/// Why a stream could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("too many open streams for this user")]
    TooManyStreams,
    #[error("the server is at its stream limit")]
    Overloaded,
}

/// Owned by each open stream: counts it open, and records how it closed.
pub(crate) struct StreamGuard {
    metrics: Arc<Metrics>,
    kind: StreamKind,
    reason: CloseReason,
    span: tracing::Span,
    _permit: StreamPermit,
}

impl StreamGuard {
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        kind: StreamKind,
        user_id: i64,
        topic: String,
        permit: StreamPermit,
    ) -> Self {
        metrics
            .streams_open
            .get_or_create(&KindLabel { kind })
            .inc();
        metrics
            .streams_opened
            .get_or_create(&KindLabel { kind })
            .inc();
        // At debug: an enabled span costs about 0.5 KB per open stream in the subscriber's registry.
        let span = tracing::debug_span!("stream", user_id, %topic, kind = ?kind);
        tracing::debug!(parent: &span, "stream opened");
        StreamGuard {
            metrics,
            kind,
            reason: CloseReason::client_gone,
            span,
            _permit: permit,
        }
    }

    pub(crate) fn close(&mut self, reason: CloseReason) {
        self.reason = reason;
    }

    pub(crate) fn sent(&self, events: u64) {
        self.metrics.events_sent.inc_by(events);
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let labels = KindLabel { kind: self.kind };
        self.metrics.streams_open.get_or_create(&labels).dec();
        self.metrics
            .streams_closed
            .get_or_create(&ReasonLabel {
                reason: self.reason,
            })
            .inc();
        tracing::debug!(parent: &self.span, reason = ?self.reason, "stream closed");
    }
}

/// When a stream must stop regardless of its items: token expiry, and the (jittered)
/// maximum lifetime that makes clients reconnect and spread over instances.
pub(crate) struct Deadlines {
    pub token_expires: Instant,
    pub lifetime_ends: Option<Instant>,
}

/// Further out than any stream lives; keeps far-future token expiries and lifetimes from
/// overflowing.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl Deadlines {
    pub(crate) fn new(token_exp: u64, max_lifetime_secs: u64) -> Self {
        let now = Instant::now();
        let left = Duration::from_secs(token_exp.saturating_sub(now_secs())).min(FAR_FUTURE);
        let token_expires = now + left;
        let lifetime_ends = (max_lifetime_secs > 0).then(|| {
            let secs = max_lifetime_secs as f64 * rand::thread_rng().gen_range(0.9..1.1);
            // Ranges are checked at start; saturate anyway rather than panic on an `Instant`.
            now + Duration::try_from_secs_f64(secs).map_or(FAR_FUTURE, |d| d.min(FAR_FUTURE))
        });
        Deadlines {
            token_expires,
            lifetime_ends,
        }
    }
}
