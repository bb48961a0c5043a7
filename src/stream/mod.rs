//! Turning state changes into SSE messages.
//!
//! Every stream speaks the same protocol (docs/api.md): a `retry:` hint, `event: snapshot`
//! with the current state, `event: update` on each change, and `event: end` with a reason
//! once there is nothing more to say. All SSE formatting lives in [`sse`]; the per-item
//! streams (one run, one pack, or a set of both) are in [`items`]; the workspace feed, which
//! never ends because runs finish, is in [`workspace`].
//!
//! Streams read the hub's cells and never talk to the listener. A stream ends by returning:
//! the guard it owns records why, and the client going away drops it mid-flight.

pub mod direct;
pub mod items;
pub mod limits;
pub mod sse;
pub mod workspace;

use crate::access::token::now_secs;
use crate::metrics::{CloseReason, KindLabel, Metrics, ReasonLabel, StreamKind};
use limits::StreamPermit;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Owned by each open stream: counts it open, and records how it closed.
pub struct StreamGuard {
    metrics: Arc<Metrics>,
    kind: StreamKind,
    reason: CloseReason,
    span: tracing::Span,
    _permit: StreamPermit,
}

impl StreamGuard {
    pub fn new(
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

    pub fn close(&mut self, reason: CloseReason) {
        self.reason = reason;
    }

    pub fn sent(&self, events: u64) {
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
pub struct Deadlines {
    pub token_expires: Instant,
    pub lifetime_ends: Option<Instant>,
}

impl Deadlines {
    pub fn new(token_exp: u64, max_lifetime_secs: u64) -> Self {
        let now = Instant::now();
        // Saturating: a token valid for millennia must not overflow the clock (a panic).
        let valid_for = Duration::from_secs(token_exp.saturating_sub(now_secs()));
        let token_expires = now
            .checked_add(valid_for)
            .unwrap_or(now + Duration::from_secs(u64::from(u32::MAX)));
        let lifetime_ends = (max_lifetime_secs > 0).then(|| {
            let secs = max_lifetime_secs as f64 * rand::thread_rng().gen_range(0.9..1.1);
            now + Duration::from_secs_f64(secs)
        });
        Deadlines {
            token_expires,
            lifetime_ends,
        }
    }

    /// Resolves when the lifetime is over (never, without one).
    pub fn lifetime(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let ends = self.lifetime_ends;
        async move {
            match ends {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        }
    }
}
