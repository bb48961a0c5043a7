//! A TCP proxy in front of Postgres that a test can break: `cut` closes every connection and
//! refuses new ones (a database that is down), `blackhole` stalls the open connections without
//! closing them (a peer that vanished without a FIN), `restore` heals both.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const OPEN: u8 = 0;
const CUT: u8 = 1;

pub struct Proxy {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    /// Connections currently stalled by `blackhole`.
    stalled: Arc<AtomicUsize>,
    /// Connections being forwarded or stalled right now.
    open: Arc<AtomicUsize>,
    /// Bumped to break the connections open at that moment.
    generation: watch::Sender<(u64, bool)>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(OPEN));
        let (generation, _) = watch::channel((0u64, false));
        let stalled = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (mode2, gen2, stalled2, open2) = (
            Arc::clone(&mode),
            generation.clone(),
            Arc::clone(&stalled),
            Arc::clone(&open),
        );
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if mode2.load(Ordering::SeqCst) == CUT {
                    drop(client);
                    continue;
                }
                let mut broken = gen2.subscribe();
                let stalled = Arc::clone(&stalled2);
                let open = Arc::clone(&open2);
                open.fetch_add(1, Ordering::SeqCst);
                let start_gen = broken.borrow().0;
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let pump = async {
                        tokio::select! {
                            _ = tokio::io::copy(&mut cr, &mut sw) => {},
                            _ = tokio::io::copy(&mut sr, &mut cw) => {},
                        }
                    };
                    let stall = tokio::select! {
                        _ = pump => return,
                        r = broken.wait_for(|(g, _)| *g > start_gen) => r.map(|v| v.1).unwrap_or(false),
                    };
                    if stall {
                        // Keep both sockets open and silent, like a dead peer.
                        stalled.fetch_add(1, Ordering::SeqCst);
                        std::future::pending::<()>().await;
                    }
                    // Returning drops both sockets: the peers see the connection close.
                });
            }
        });
        Proxy {
            addr,
            mode,
            stalled,
            open,
            generation,
        }
    }

    /// The database is down: open connections close, new ones are refused.
    pub fn cut(&self) {
        self.mode.store(CUT, Ordering::SeqCst);
        self.generation.send_modify(|(g, stall)| {
            *g += 1;
            *stall = false;
        });
    }

    /// Open connections go silent without closing; new connections work.
    pub fn blackhole(&self) {
        self.generation.send_modify(|(g, stall)| {
            *g += 1;
            *stall = true;
        });
    }

    /// Waits until every open connection has gone silent (after `blackhole`).
    pub async fn wait_all_stalled(&self) {
        let deadline = tokio::time::Instant::now() + super::WAIT;
        while self.stalled.load(Ordering::SeqCst) < self.open.load(Ordering::SeqCst).max(1) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "connections never stalled"
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    pub fn restore(&self) {
        self.mode.store(OPEN, Ordering::SeqCst);
    }
}
