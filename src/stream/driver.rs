//! The stream driver: the one loop every stream runs, whatever it watches and wherever its
//! bytes go.
//!
//! It owns everything the kinds of stream share: the writes (to a socket through its
//! [`Sink`], or to hyper through a channel), the access decisions and their gate, the
//! deadlines (token expiry, lifetime, keep-alive, re-check back-off: one timer), the client
//! going away, and shutdown. A [`Source`] says what is pending — a frame to write, a
//! decision to make, the end — and the driver does it.
//!
//! The access rule, stated once: **a state is written only if the stream's grant for the
//! item, as the item is in that state, is current** ([`crate::access::Grant::admits`]).
//! Sources never hand the driver a frame of a state their grant does not admit; when it does
//! not, they ask for a decision instead, and the driver writes nothing until one is made:
//! the newest state (if allowed), or `end forbidden`. A decision that cannot be made (the
//! database is unreachable, the pool exhausted) is retried with back-off, and after
//! [`DECISION_DEADLINE`] without one the stream ends with `end unavailable`. Direct delivery
//! (the watcher writing into the socket) goes through the same gate, with the same grant.

use super::items::Items;
use super::sink::Sink;
use super::workspace::Feed;
use super::{sse, Deadlines, StreamGuard, Streams};
use crate::access::{AccessError, UserAccess};
use crate::metrics::CloseReason;
use crate::wire;
use bytes::Bytes;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long a stream may go without an access decision it needs before it gives up.
pub const DECISION_DEADLINE: Duration = Duration::from_secs(10);
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(2);

/// Where a stream's bytes go.
pub enum Out {
    /// A socket the connection front handed over; the driver writes HTTP/1.1 chunks.
    Socket(Arc<Sink>),
    /// hyper's response body, through a channel.
    Channel(mpsc::Sender<Bytes>),
}

impl Out {
    /// Writes one SSE frame. With `seq` (single-item streams on a socket), writes only if
    /// that state is newer than the last one written; returns whether it wrote.
    async fn write(&self, frame: Bytes, seq: Option<u64>) -> io::Result<bool> {
        match self {
            Out::Socket(sink) => {
                let mut size = [0u8; wire::CHUNK_SIZE_MAX];
                let size = wire::chunk_size(&mut size, frame.len());
                sink.write(&[size, &frame, wire::CHUNK_END], seq).await
            }
            Out::Channel(tx) => match tx.send(frame).await {
                Ok(()) => Ok(true),
                Err(_) => Err(io::ErrorKind::BrokenPipe.into()),
            },
        }
    }

    /// Resolves when the client has gone away.
    async fn closed(&self) {
        match self {
            Out::Socket(sink) => sink.closed().await,
            Out::Channel(tx) => tx.closed().await,
        }
    }

    fn sink(&self) -> Option<&Arc<Sink>> {
        match self {
            Out::Socket(sink) => Some(sink),
            Out::Channel(_) => None,
        }
    }
}

/// What a stream watches.
pub enum Source {
    Items(Items),
    Feed(Feed),
}

/// What a source has pending.
pub enum Step {
    /// Write this frame (`seq`: see [`Out::write`]), then ask again.
    Write(Bytes, Option<u64>),
    /// A state is not covered by a current decision: decide before anything is written.
    Decide,
    /// A read the source needs failed; retried like a decision.
    Failed,
    End(End),
    /// Nothing until something wakes the stream.
    Idle,
}

/// How a stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Terminal,
    Forbidden,
    Gone,
    Unavailable,
    TokenExpired,
    /// The lifetime is over: no `end`, so the client reconnects (maybe elsewhere).
    Lifetime,
    /// No `end` either: clients reconnect to another instance.
    Shutdown,
    ClientGone,
}

impl End {
    /// The `end` event's reason, for the ends that tell the client.
    fn reason(self) -> Option<&'static str> {
        match self {
            End::Terminal => Some("terminal"),
            End::Forbidden => Some("forbidden"),
            End::Gone => Some("gone"),
            End::Unavailable => Some("unavailable"),
            End::TokenExpired => Some("token_expired"),
            End::Lifetime | End::Shutdown | End::ClientGone => None,
        }
    }

    fn close_reason(self) -> CloseReason {
        match self {
            End::Terminal => CloseReason::terminal,
            End::Forbidden => CloseReason::forbidden,
            End::Gone => CloseReason::gone,
            End::Unavailable => CloseReason::unavailable,
            End::TokenExpired => CloseReason::token_expired,
            End::Lifetime => CloseReason::lifetime,
            End::Shutdown => CloseReason::shutdown,
            End::ClientGone => CloseReason::client_gone,
        }
    }
}

impl Source {
    async fn step(&mut self, streams: &Streams) -> Step {
        match self {
            Source::Items(items) => items.step(),
            Source::Feed(feed) => feed.step(streams).await,
        }
    }

    async fn decide(
        &mut self,
        streams: &Streams,
        user: &Arc<UserAccess>,
    ) -> Result<(), AccessError> {
        match self {
            Source::Items(items) => items.decide(streams, user).await,
            Source::Feed(feed) => feed.decide(streams, user).await,
        }
    }

    /// Resolves when the source may have something new (false: it can never again).
    async fn changed(&mut self) -> bool {
        match self {
            Source::Items(items) => items.changed().await,
            Source::Feed(feed) => feed.changed().await,
        }
    }

    /// Called once the first frames are on a socket: the source may switch to direct
    /// delivery.
    fn started(&mut self, sink: &Arc<Sink>) {
        if let Source::Items(items) = self {
            items.attach(sink);
        }
    }
}

/// An opened stream, ready to be driven.
pub struct Stream {
    pub(super) streams: Streams,
    pub(super) user: Arc<UserAccess>,
    pub(super) deadlines: Deadlines,
    pub(super) guard: StreamGuard,
    pub(super) retry_ms: u64,
    pub(super) source: Source,
}

/// A decision the stream needs but has not got.
struct Undecided {
    since: Instant,
    retry_at: Instant,
    backoff: Duration,
}

enum Wake {
    Timer,
    Access,
    Changed,
    End(End),
}

impl Stream {
    /// Runs the stream to its end. The body's terminator, if any, is the caller's.
    pub async fn run(mut self, out: Out) {
        let end = self.drive(&out).await;
        if let Some(sink) = out.sink() {
            sink.admit(None);
        }
        if let Some(reason) = end.reason() {
            let _ = out.write(sse::end(reason), None).await;
        }
        self.guard.close(end.close_reason());
    }

    async fn drive(&mut self, out: &Out) -> End {
        if out.write(sse::retry(self.retry_ms), None).await.is_err() {
            return End::ClientGone;
        }
        let mut wake = self.user.wake();
        let keepalive = self.streams.keepalive;
        let mut last_write = Instant::now();
        let mut undecided: Option<Undecided> = None;
        let mut started = false;
        let shutdown = self.streams.shutdown.clone();
        let timer = tokio::time::sleep_until(last_write + keepalive);
        tokio::pin!(timer);
        loop {
            // Do everything pending: decisions first, then writes, in the source's order.
            loop {
                let step = self.source.step(&self.streams).await;
                match step {
                    Step::Write(frame, seq) => match out.write(frame, seq).await {
                        Ok(true) => {
                            self.guard.sent(1);
                            last_write = Instant::now();
                        }
                        Ok(false) => {}
                        Err(_) => return End::ClientGone,
                    },
                    Step::End(end) => return end,
                    Step::Idle => {
                        if !started {
                            started = true;
                            if let Some(sink) = out.sink() {
                                self.source.started(sink);
                                continue;
                            }
                        }
                        break;
                    }
                    Step::Decide | Step::Failed => {
                        let now = Instant::now();
                        let pending = undecided.get_or_insert(Undecided {
                            since: now,
                            retry_at: now,
                            backoff: FIRST_RETRY,
                        });
                        if now < pending.retry_at {
                            break; // the timer brings us back
                        }
                        let give_up = pending.since + DECISION_DEADLINE;
                        let decided = if matches!(step, Step::Failed) {
                            Err(AccessError::Unavailable)
                        } else {
                            tokio::select! {
                                biased;
                                _ = shutdown.cancelled() => return End::Shutdown,
                                _ = out.closed() => return End::ClientGone,
                                _ = tokio::time::sleep_until(give_up) => return End::Unavailable,
                                r = self.source.decide(&self.streams, &self.user) => r,
                            }
                        };
                        match decided {
                            Ok(()) => undecided = None,
                            Err(AccessError::NotFound | AccessError::Forbidden) => {
                                return End::Forbidden
                            }
                            Err(AccessError::Unavailable | AccessError::Internal) => {
                                let now = Instant::now();
                                if now >= give_up {
                                    return End::Unavailable;
                                }
                                pending.retry_at = now + pending.backoff;
                                pending.backoff = (pending.backoff * 2).min(MAX_RETRY);
                                break;
                            }
                        }
                    }
                }
            }

            // Wait for the next thing to happen; one timer covers every deadline.
            let last = match out.sink() {
                Some(sink) => sink.last_write().max(last_write),
                None => last_write,
            };
            let mut at = self.deadlines.token_expires.min(last + keepalive);
            if let Some(ends) = self.deadlines.lifetime_ends {
                at = at.min(ends);
            }
            if let Some(u) = &undecided {
                at = at.min(u.retry_at).min(u.since + DECISION_DEADLINE);
            }
            if timer.deadline() != at {
                timer.as_mut().reset(at);
            }
            let woke = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Wake::End(End::Shutdown),
                _ = out.closed() => Wake::End(End::ClientGone),
                _ = &mut timer => Wake::Timer,
                r = wake.changed() => if r.is_ok() { Wake::Access } else { Wake::End(End::Shutdown) },
                more = self.source.changed() => if more { Wake::Changed } else { Wake::End(End::Shutdown) },
            };
            match woke {
                Wake::End(end) => return end,
                Wake::Access | Wake::Changed => {}
                Wake::Timer => {
                    let now = Instant::now();
                    if now >= self.deadlines.token_expires {
                        return End::TokenExpired;
                    }
                    if self.deadlines.lifetime_ends.is_some_and(|ends| now >= ends) {
                        return End::Lifetime;
                    }
                    if undecided
                        .as_ref()
                        .is_some_and(|u| now >= u.since + DECISION_DEADLINE)
                    {
                        return End::Unavailable;
                    }
                    let last = match out.sink() {
                        Some(sink) => sink.last_write().max(last_write),
                        None => last_write,
                    };
                    // Keep-alive only after `keepalive` of silence: events count as traffic.
                    if now >= last + keepalive {
                        if out.write(sse::keepalive(), None).await.is_err() {
                            return End::ClientGone;
                        }
                        last_write = Instant::now();
                    }
                }
            }
        }
    }
}
