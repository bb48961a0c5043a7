//! Direct delivery: the watcher writes an update straight into the sockets of a run's (or a
//! pack's) single-item streams, instead of waking one task per stream.
//!
//! Why: with 10,000 streams on one run, waking 10,000 tasks so that each writes one frame
//! cost about a quarter of the server's CPU per update on top of the socket writes
//! themselves (BENCHMARKS.md, "Where the bytes and the time go"). Here the new state's frame
//! is written by a few delivery tasks, each looping over a slice of the subscribers with
//! non-blocking writes.
//!
//! A stream's task stays in charge of everything else, and takes over whenever the fast path
//! cannot finish: a socket that would block (a slow client: its task flushes and then skips
//! to the newest state), a terminal state (the task writes it and `end`), a lock held by the
//! task. Every write to the socket — by the task or a delivery — goes through the [`Sink`]'s
//! lock, and a state is written only if it is newer than the last one written (`seq`, the
//! cell's publish counter), so the two never interleave or reorder.

use crate::metrics::Metrics;
use bytes::Bytes;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use tokio::net::TcpStream;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Subscribers one delivery task writes to: small enough that both cores share a burst,
/// large enough that a 10,000-subscriber update is a few dozen tasks, not 10,000.
const DELIVERY_BATCH: usize = 128;

/// The write side of a stream's connection, shared by its task and the deliveries.
pub struct Sink {
    socket: TcpStream,
    state: Mutex<SinkState>,
    wake: Notify,
}

struct SinkState {
    /// Deliveries may write (the response head and the snapshot are on the wire, and the
    /// stream has not ended).
    direct: bool,
    /// The publish counter of the newest state written.
    seq: u64,
    /// Bytes the socket did not take yet; only the stream's task writes them.
    pending: Vec<u8>,
    last_write: Instant,
}

/// What a delivery did for one sink.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    Sent,
    /// Not for this sink (not direct, or it already has this state or a newer one).
    Skipped,
    /// Its task must take over.
    Wake,
}

impl Sink {
    pub fn new(socket: TcpStream) -> Arc<Self> {
        Arc::new(Sink {
            socket,
            state: Mutex::new(SinkState {
                direct: false,
                seq: 0,
                pending: Vec::new(),
                last_write: Instant::now(),
            }),
            wake: Notify::new(),
        })
    }

    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    pub fn into_socket(self) -> TcpStream {
        self.socket
    }

    fn lock(&self) -> MutexGuard<'_, SinkState> {
        // Every critical section leaves the state consistent; a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves when a delivery handed this stream over to its task.
    pub fn handed_over(&self) -> Notified<'_> {
        self.wake.notified()
    }

    /// Lets deliveries write from now on (`on`), or never again.
    pub fn set_direct(&self, on: bool) {
        self.lock().direct = on;
    }

    /// Records that the client already has the state `seq` (it was in the snapshot).
    pub fn advance(&self, seq: u64) {
        let mut state = self.lock();
        state.seq = state.seq.max(seq);
    }

    pub fn last_write(&self) -> Instant {
        self.lock().last_write
    }

    /// Writes `parts` after anything still pending, waiting for the socket as needed. With
    /// `seq`, writes only if that state is newer than the newest written; returns whether it
    /// wrote.
    pub async fn write(&self, parts: &[&[u8]], seq: Option<u64>) -> io::Result<bool> {
        {
            let mut state = self.lock();
            if let Some(seq) = seq {
                if seq <= state.seq {
                    return Ok(false);
                }
                state.seq = seq;
            }
            state.last_write = Instant::now();
            if state.pending.is_empty() {
                let written = self.try_write(parts)?;
                let mut skip = written;
                for part in parts {
                    let taken = skip.min(part.len());
                    state.pending.extend_from_slice(&part[taken..]);
                    skip -= taken;
                }
            } else {
                parts
                    .iter()
                    .for_each(|p| state.pending.extend_from_slice(p));
            }
        }
        self.flush().await?;
        Ok(true)
    }

    /// Writes whatever is pending, waiting for the socket as needed.
    pub async fn flush(&self) -> io::Result<()> {
        loop {
            {
                let mut state = self.lock();
                if state.pending.is_empty() {
                    return Ok(());
                }
                let written = self.try_write(&[&state.pending])?;
                state.pending.drain(..written);
                if state.pending.is_empty() {
                    state.pending = Vec::new(); // a slow moment should not keep its buffer
                    return Ok(());
                }
            }
            self.socket.writable().await?;
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

    /// A delivery's attempt to write the state `seq` (already chunk-framed) without waiting.
    pub fn offer(&self, wire: &[u8], seq: u64) -> Offer {
        let mut state = match self.state.try_lock() {
            Ok(state) => state,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            // The task is writing: it looks for newer states when it is done.
            Err(TryLockError::WouldBlock) => return Offer::Wake,
        };
        if !state.direct || seq <= state.seq {
            return Offer::Skipped;
        }
        if !state.pending.is_empty() {
            return Offer::Wake; // a slow client: its task catches up to the newest state
        }

        match self.try_write(&[wire]) {
            Ok(n) if n == wire.len() => {
                state.seq = seq;
                state.last_write = Instant::now();
                Offer::Sent
            }
            Ok(0) => Offer::Wake,
            Ok(n) => {
                // Part of the frame is out: the rest must follow before anything else.
                state.seq = seq;
                state.last_write = Instant::now();
                state.pending.extend_from_slice(&wire[n..]);
                Offer::Wake
            }
            // A broken connection: the task notices it on its own next write or read.
            Err(_) => {
                state.direct = false;
                Offer::Wake
            }
        }
    }

    /// Wakes the stream's task to take over (flush, then skip to the newest state).
    pub fn hand_over(&self) {
        self.wake.notify_one();
    }
}

/// A new state for the direct subscribers of one cell.
pub struct Delivery {
    pub seq: u64,
    /// The `update` frame as one HTTP/1.1 chunk; None for a terminal state, which every
    /// stream's task writes itself (with `end`).
    pub wire: Option<Bytes>,
    pub sinks: Vec<Arc<Sink>>,
}

impl Delivery {
    /// Writes the state to every sink, a batch per task, and hands the rest to their tasks.
    pub fn deliver(self, metrics: &Arc<Metrics>) {
        if self.sinks.is_empty() {
            return;
        }
        let Some(wire) = self.wire else {
            self.sinks.iter().for_each(|s| s.hand_over());
            metrics.direct_handovers.inc_by(self.sinks.len() as u64);
            return;
        };
        let seq = self.seq;
        let mut sinks = self.sinks;
        while !sinks.is_empty() {
            let batch: Vec<Arc<Sink>> = sinks.split_off(sinks.len().saturating_sub(DELIVERY_BATCH));
            let (wire, metrics) = (wire.clone(), Arc::clone(metrics));
            tokio::spawn(async move {
                let (mut sent, mut handed_over) = (0, 0);
                for sink in batch {
                    match sink.offer(&wire, seq) {
                        Offer::Sent => sent += 1,
                        Offer::Skipped => {}
                        Offer::Wake => {
                            sink.hand_over();
                            handed_over += 1;
                        }
                    }
                }
                metrics.events_sent.inc_by(sent);
                metrics.direct_handovers.inc_by(handed_over);
            });
        }
    }
}

/// Frames `data` as one HTTP/1.1 chunk.
pub fn chunk(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 12);
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A sink on one end of a real loopback connection, and the client's end.
    async fn pair() -> (Arc<Sink>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (Sink::new(accepted.unwrap().0), client.unwrap())
    }

    #[tokio::test]
    async fn offers_write_only_newer_states_and_only_when_direct() {
        let (sink, mut client) = pair().await;
        assert_eq!(sink.offer(b"a", 1), Offer::Skipped, "not direct yet");
        sink.set_direct(true);
        assert_eq!(sink.offer(b"b", 2), Offer::Sent);
        assert_eq!(sink.offer(b"c", 2), Offer::Skipped, "same state again");
        assert_eq!(sink.offer(b"d", 1), Offer::Skipped, "older state");
        // The task's own writes obey the same order.
        assert!(!sink.write(&[b"e"], Some(2)).await.unwrap());
        assert!(sink.write(&[b"f"], Some(3)).await.unwrap());
        assert!(sink.write(&[b"g"], None).await.unwrap());
        sink.set_direct(false);
        assert_eq!(sink.offer(b"h", 9), Offer::Skipped, "stream over");
        drop(sink);
        let mut got = String::new();
        client.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "bfg");
    }

    #[tokio::test]
    async fn nothing_overtakes_the_rest_of_a_partly_written_frame() {
        let (sink, mut client) = pair().await;
        sink.set_direct(true);
        // As if an earlier frame went out only in part, and the socket has room again.
        sink.lock().pending.extend_from_slice(b"rest-of-1;");
        assert_eq!(sink.offer(b"frame-2;", 2), Offer::Wake);
        sink.flush().await.unwrap();
        assert!(sink.write(&[b"frame-3;"], Some(3)).await.unwrap());
        drop(sink);
        let mut got = String::new();
        client.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "rest-of-1;frame-3;");
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_handed_to_its_task() {
        let (sink, client) = pair().await;
        sink.set_direct(true);
        let frame = vec![b'x'; 64 * 1024];
        let mut seq = 0;
        // Fill the client's receive buffer and the server's send buffer.
        let handed_over = loop {
            seq += 1;
            assert!(seq < 10_000, "the socket never filled");
            match sink.offer(&frame, seq) {
                Offer::Sent => continue,
                other => break other,
            }
        };
        assert_eq!(handed_over, Offer::Wake);
        // Whatever is left of a partly written frame stays ahead of everything else: later
        // offers go to the task too, and the task's flush waits for the client.
        assert_eq!(sink.offer(&frame, seq + 1), Offer::Wake);
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
