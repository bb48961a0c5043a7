//! The write side of a stream's connection, shared by the stream's driver and the watcher's
//! deliveries: the driver's fast path for single-item streams.
//!
//! Why direct delivery: with 10,000 streams on one run, waking 10,000 tasks so that each
//! writes one frame cost about a quarter of the server's CPU per update on top of the socket
//! writes themselves (BENCHMARKS.md, "Where the bytes and the time go"). Instead the watcher's
//! delivery tasks loop over a cell's sinks with non-blocking writes.
//!
//! A delivery writes only what the driver would write itself: the sink holds the driver's
//! current access [`Grant`], and a state is offered through the same gate
//! ([`Grant::admits`]). Whatever the fast path cannot finish goes to the driver: a socket
//! that would block (a slow client: the driver flushes and then skips to the newest state), a
//! terminal or gone state, a stale or non-matching grant, a lock held by the driver. Every
//! write — by the driver or a delivery — goes through the sink's lock, and a state is written
//! only if it is newer than the last one written (`seq`, the cell's publish counter), so the
//! two never interleave or reorder.
//!
//! The sink owns the stream's write deadline, the one bound on every write and flush of the
//! connection (events, keep-alives, `end`, the HTTP terminator): once bytes are pending and
//! the client has taken none of them for `--write-timeout-secs`, the sink is broken — the
//! waiting write fails, and every later one fails at once — so a client that stops reading
//! frees its stream and connection within that time, whoever writes.

use crate::access::Grant;
use crate::model::State;
use crate::stream::sse;
use crate::watch::hub::{Direct, Offer};
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The write side of a stream's connection, shared by its task and the deliveries.
pub(crate) struct Sink {
    socket: TcpStream,
    write_timeout: Duration,
    state: Mutex<SinkState>,
    wake: Notify,
}

struct SinkState {
    /// What deliveries may write: states this grant admits. None until the head and the
    /// snapshot are on the wire, and again once the stream ends.
    grant: Option<Grant>,
    /// The publish counter of the newest state written.
    seq: u64,
    /// Bytes the socket did not take yet; only the stream's task writes them.
    pending: Vec<u8>,
    last_write: Instant,
    /// While bytes are pending: when the socket last took any (or when they became pending).
    progress: Instant,
    /// The client took nothing within the write deadline: nothing is written any more.
    broken: bool,
}

impl SinkState {
    fn check(&self) -> io::Result<()> {
        match self.broken {
            true => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took nothing within the write timeout",
            )),
            false => Ok(()),
        }
    }
}

impl Sink {
    pub(crate) fn new(socket: TcpStream, write_timeout: Duration) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Sink {
            socket,
            write_timeout,
            state: Mutex::new(SinkState {
                grant: None,
                seq: 0,
                pending: Vec::new(),
                last_write: now,
                progress: now,
                broken: false,
            }),
            wake: Notify::new(),
        })
    }

    pub(crate) fn into_socket(self) -> TcpStream {
        self.socket
    }

    fn lock(&self) -> MutexGuard<'_, SinkState> {
        // Every critical section leaves the state consistent; a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves when a delivery handed this stream over to its task.
    pub(crate) fn handed_over(&self) -> Notified<'_> {
        self.wake.notified()
    }

    /// Lets deliveries write what `grant` admits from now on, or nothing (None).
    pub(crate) fn admit(&self, grant: Option<Grant>) {
        self.lock().grant = grant;
    }

    /// Resolves when the client closed its side or sent anything (streams read nothing).
    pub(crate) async fn closed(&self) {
        let mut probe = [0u8; 16];
        loop {
            if self.socket.readable().await.is_err() {
                return;
            }
            match self.socket.try_read(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                _ => return,
            }
        }
    }

    pub(crate) fn last_write(&self) -> Instant {
        self.lock().last_write
    }

    /// Writes `parts` after anything still pending, waiting for the socket as needed (within
    /// the write deadline). With `seq`, writes only if that state is newer than the newest
    /// written; returns whether it wrote.
    pub(crate) async fn write(&self, parts: &[&[u8]], seq: Option<u64>) -> io::Result<bool> {
        {
            let mut state = self.lock();
            state.check()?;
            if let Some(seq) = seq {
                if seq <= state.seq {
                    return Ok(false);
                }
                state.seq = seq;
            }
            let now = Instant::now();
            state.last_write = now;
            if state.pending.is_empty() {
                let written = self.try_write(parts)?;
                let mut skip = written;
                for part in parts {
                    let taken = skip.min(part.len());
                    state.pending.extend_from_slice(&part[taken..]);
                    skip -= taken;
                }
                state.progress = now;
            } else {
                parts
                    .iter()
                    .for_each(|p| state.pending.extend_from_slice(p));
            }
        }
        self.flush().await?;
        Ok(true)
    }

    /// Writes whatever is pending, waiting for the socket as needed, but not past the write
    /// deadline.
    pub(crate) async fn flush(&self) -> io::Result<()> {
        loop {
            let due = {
                let mut state = self.lock();
                state.check()?;
                if state.pending.is_empty() {
                    return Ok(());
                }
                let written = self.try_write(&[&state.pending])?;
                state.pending.drain(..written);
                if state.pending.is_empty() {
                    state.pending = Vec::new(); // a slow moment should not keep its buffer
                    return Ok(());
                }
                if written > 0 {
                    state.progress = Instant::now();
                }
                state.progress + self.write_timeout
            };
            if tokio::time::timeout_at(due, self.socket.writable())
                .await
                .is_err()
            {
                let mut state = self.lock();
                // Someone else's write may have made progress meanwhile: look again.
                if Instant::now() >= state.progress + self.write_timeout {
                    state.broken = true;
                    state.grant = None;
                    state.check()?;
                }
            }
        }
    }

    /// A non-blocking write of as much as the socket takes now (0 if it would block).
    /// Runs once per event per stream, so no allocation: up to four parts go in one `writev`
    /// (callers pass at most three); any beyond count as not written and stay pending.
    fn try_write(&self, parts: &[&[u8]]) -> io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); 4];
        let n = parts.len().min(slices.len());
        for (slice, part) in slices.iter_mut().zip(parts) {
            *slice = IoSlice::new(part);
        }
        match self.socket.try_write_vectored(&slices[..n]) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }
}

impl Direct for Sink {
    /// A delivery's attempt to write the state `seq` without waiting.
    fn offer(&self, state: &Arc<State>, seq: u64) -> Offer {
        let mut sink = match self.state.try_lock() {
            Ok(sink) => sink,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            // The driver is writing: it looks for newer states when it is done.
            Err(TryLockError::WouldBlock) => return Offer::Wake,
        };
        if sink.broken {
            return Offer::Skipped;
        }
        let Some(grant) = &sink.grant else {
            return Offer::Skipped;
        };
        if seq <= sink.seq {
            return Offer::Skipped;
        }
        // The gate; and the driver writes terminal states itself, followed by `end`.
        if state.terminal || !grant.admits(state.owner.as_ref()) {
            return Offer::Wake;
        }
        if !sink.pending.is_empty() {
            return Offer::Wake; // a slow client: its driver catches up to the newest state
        }
        let wire = sse::update_chunk(state);
        match self.try_write(&[wire]) {
            Ok(n) if n == wire.len() => {
                sink.seq = seq;
                sink.last_write = Instant::now();
                Offer::Sent
            }
            Ok(0) => Offer::Wake,
            Ok(n) => {
                // Part of the frame is out: the rest must follow before anything else.
                let now = Instant::now();
                sink.seq = seq;
                sink.last_write = now;
                sink.progress = now;
                sink.pending.extend_from_slice(&wire[n..]);
                Offer::Wake
            }
            // A broken connection: the driver notices it on its own next write or read.
            Err(_) => {
                sink.grant = None;
                Offer::Wake
            }
        }
    }

    /// Wakes the stream's driver to take over (flush, then skip to the newest state).
    fn hand_over(&self) {
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{Epochs, Scope};
    use crate::model::{Owner, RunRow, Stamp};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A sink on one end of a real loopback connection, and the client's end.
    async fn pair() -> (Arc<Sink>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let sink = Sink::new(accepted.unwrap().0, Duration::from_secs(30));
        (sink, client.unwrap())
    }

    fn run(version: i64, tenant: Option<i64>, padding: usize) -> Arc<State> {
        let counts = format!(r#"{{"pad":"{}"}}"#, "x".repeat(padding));
        let row = RunRow::running(1, 1, tenant, &counts);
        Arc::new(State::run(&row, Stamp::Version(version), None))
    }

    fn granted(epochs: &Arc<Epochs>, tenant: Option<i64>) -> Grant {
        let user = epochs.user(1);
        let owner = Owner::Run {
            workspace: 1,
            tenant,
        };
        Grant::new(&user, user.now(), Scope::Owner(owner))
    }

    #[tokio::test]
    async fn offers_write_only_newer_admitted_states() {
        let epochs = Arc::new(Epochs::default());
        let (sink, mut client) = pair().await;
        assert_eq!(
            sink.offer(&run(1, None, 0), 1),
            Offer::Skipped,
            "no grant yet"
        );
        sink.admit(Some(granted(&epochs, None)));
        assert_eq!(sink.offer(&run(2, None, 0), 2), Offer::Sent);
        assert_eq!(
            sink.offer(&run(2, None, 0), 2),
            Offer::Skipped,
            "same state again"
        );
        assert_eq!(
            sink.offer(&run(1, None, 0), 1),
            Offer::Skipped,
            "older state"
        );
        assert_eq!(
            sink.offer(&run(3, Some(9), 0), 3),
            Offer::Wake,
            "moved elsewhere"
        );
        epochs.user_changed(1);
        assert_eq!(sink.offer(&run(4, None, 0), 4), Offer::Wake, "stale grant");
        // The driver's own writes obey the same order.
        assert!(!sink.write(&[b"e"], Some(2)).await.unwrap());
        assert!(sink.write(&[b"f"], Some(5)).await.unwrap());
        assert!(sink.write(&[b"g"], None).await.unwrap());
        sink.admit(None);
        assert_eq!(
            sink.offer(&run(9, None, 0), 9),
            Offer::Skipped,
            "stream over"
        );
        drop(sink);
        let mut got = String::new();
        client.read_to_string(&mut got).await.unwrap();
        let update = String::from_utf8(sse::update_chunk(&run(2, None, 0)).to_vec()).unwrap();
        assert_eq!(got, format!("{update}fg"));
    }

    #[tokio::test]
    async fn nothing_overtakes_the_rest_of_a_partly_written_frame() {
        let epochs = Arc::new(Epochs::default());
        let (sink, mut client) = pair().await;
        sink.admit(Some(granted(&epochs, None)));
        // As if an earlier frame went out only in part, and the socket has room again.
        sink.lock().pending.extend_from_slice(b"rest-of-1;");
        assert_eq!(sink.offer(&run(2, None, 0), 2), Offer::Wake);
        sink.flush().await.unwrap();
        assert!(sink.write(&[b"frame-3;"], Some(3)).await.unwrap());
        drop(sink);
        let mut got = String::new();
        client.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "rest-of-1;frame-3;");
    }

    /// A keep-alive, an `end` or the terminator written into a socket the client stopped
    /// emptying, with nothing pending before: the write gives up at the deadline, and every
    /// later one at once.
    #[tokio::test]
    async fn every_write_gives_up_at_the_write_deadline() {
        let (sink, _client) = pair().await;
        let sink = {
            let socket = Arc::try_unwrap(sink).ok().unwrap().into_socket();
            Sink::new(socket, Duration::from_millis(300))
        };
        // Fill the socket with whole frames only, as the deliveries do.
        let frame = vec![b'x'; 16 * 1024];
        let mut filled = 0;
        loop {
            match sink.try_write(&[&frame]).unwrap() {
                0 => break,
                n => filled += n,
            }
            assert!(filled < 64 << 20, "the socket never filled");
        }
        assert!(sink.lock().pending.is_empty());
        let started = Instant::now();
        let keepalive = tokio::time::timeout(Duration::from_secs(5), sink.write(&[b":\n"], None))
            .await
            .expect("the write gave up by itself");
        assert_eq!(keepalive.unwrap_err().kind(), io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
        let started = Instant::now();
        assert!(sink.write(&[b"0\r\n\r\n"], None).await.is_err());
        assert!(sink.flush().await.is_err());
        assert!(started.elapsed() < Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_handed_to_its_driver() {
        let epochs = Arc::new(Epochs::default());
        let (sink, client) = pair().await;
        sink.admit(Some(granted(&epochs, None)));
        let mut seq = 0;
        // Fill the client's receive buffer and the server's send buffer.
        let handed_over = loop {
            seq += 1;
            assert!(seq < 10_000, "the socket never filled");
            match sink.offer(&run(seq as i64, None, 64 * 1024), seq) {
                Offer::Sent => continue,
                other => break other,
            }
        };
        assert_eq!(handed_over, Offer::Wake);
        // Whatever is left of a partly written frame stays ahead of everything else: later
        // offers go to the driver too, and the driver's flush waits for the client.
        assert_eq!(
            sink.offer(&run(seq as i64 + 1, None, 10), seq + 1),
            Offer::Wake
        );
        let mut flushed = tokio::spawn({
            let sink = Arc::clone(&sink);
            async move { sink.flush().await }
        });
        let mut client = client;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0usize;
        loop {
            tokio::select! {
                done = &mut flushed => {
                    done.unwrap().unwrap();
                    break;
                }
                n = client.read(&mut buf) => total += n.unwrap(),
            }
        }
        assert!(total > 0);
        assert!(sink.lock().pending.is_empty());
    }
}
