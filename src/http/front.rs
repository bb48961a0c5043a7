//! The connection front: accepts TCP connections and serves SSE streams itself, handing every
//! other request to hyper.
//!
//! Why: a stream holds its connection for minutes or hours, and hyper keeps an 8–16 KB read
//! buffer (plus write buffers) for every connection for as long as it lives — most of what an
//! idle stream cost (measured: 19 KB per stream with hyper, see BENCHMARKS.md). Here a
//! `GET` for a stream path is parsed with `httparse` from a small buffer that is freed before
//! streaming starts; the request still goes through the same axum router (auth, CORS, errors),
//! and only the response body is written by hand: each SSE event as one HTTP/1.1 chunk. The
//! connection closes after the stream (EventSource reconnects on a new one anyway).
//!
//! Anything else — other paths, other methods, HTTP/2, a request with a body — is replayed
//! into hyper with the bytes already read, so the rest of the API is served by hyper as usual.

use super::sse::StreamSlot;
use crate::stream::sink::Sink;
use crate::stream::Out;
use crate::wire;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Largest request head accepted on the stream path (the rest of the API gets hyper's limits).
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// A client must send its request head within this time.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown`; then stops accepting, lets open
/// connections finish (streams end on the same token) and returns once all are done.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((socket, _)) => {
                let _ = socket.set_nodelay(true);
                tracker.spawn(connection(socket, router.clone(), shutdown.clone()));
            }
            // Out of file descriptors and the like: back off instead of spinning.
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

async fn connection(mut socket: TcpStream, router: Router, shutdown: CancellationToken) {
    let mut head = Vec::with_capacity(1024);
    let parsed = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut socket, &mut head)).await;
    match parsed {
        Ok(Ok(Some(request))) if is_stream(&request) => {
            drop(head);
            let _ = stream(socket, router, request).await;
        }
        Ok(Ok(_)) => hand_to_hyper(socket, head, router, shutdown).await,
        Ok(Err(HeadError::TooLarge)) => {
            let _ = socket
                .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
        Ok(Err(HeadError::Io)) | Err(_) => {}
    }
}

enum HeadError {
    Io,
    TooLarge,
}

/// What a buffer of request bytes holds so far.
pub enum Head {
    /// Not a complete head yet.
    Partial,
    /// A plain HTTP/1.1 request without a body, that the front may serve.
    Plain(Box<Request<Body>>),
    /// Anything hyper should handle: HTTP/2, HTTP/1.0, bodies, pipelining, malformed input.
    Other,
}

/// Parses the bytes read so far. Pure, so it can be fuzzed.
pub fn parse_head(buf: &[u8]) -> Head {
    if buf.starts_with(b"PRI ") {
        return Head::Other; // HTTP/2 prior knowledge
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        // Bytes after the head belong to a body or a pipelined request: hyper's job.
        Ok(httparse::Status::Complete(len)) if len == buf.len() => {
            to_request(&req).map_or(Head::Other, |r| Head::Plain(Box::new(r)))
        }
        Ok(httparse::Status::Complete(_)) => Head::Other,
        Ok(httparse::Status::Partial) => Head::Partial,
        // Malformed or too many headers: let hyper answer it properly.
        Err(_) => Head::Other,
    }
}

/// Reads until the request head is complete. Returns the request if the front serves it,
/// None for anything hyper should handle.
async fn read_head(
    socket: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<Option<Request<Body>>, HeadError> {
    loop {
        let mut chunk = [0u8; 1024];
        let n = socket.read(&mut chunk).await.map_err(|_| HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Io);
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_head(buf) {
            Head::Plain(request) => return Ok(Some(*request)),
            Head::Other => return Ok(None),
            Head::Partial if buf.len() < MAX_HEAD => continue,
            Head::Partial => return Err(HeadError::TooLarge),
        }
    }
}

fn to_request(req: &httparse::Request) -> Option<Request<Body>> {
    if req.version != Some(1) {
        return None;
    }
    let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    let uri: Uri = req.path?.parse().ok()?;
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        headers.append(name, value);
    }
    if headers.contains_key(header::CONTENT_LENGTH)
        || headers.contains_key(header::TRANSFER_ENCODING)
    {
        return None;
    }
    let mut request = Request::new(Body::empty());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Some(request)
}

/// The requests served here: `GET` on a stream path.
fn is_stream(req: &Request<Body>) -> bool {
    let path = req.uri().path();
    req.method() == Method::GET
        && path.starts_with("/v1/")
        && (path.ends_with("/events") || path == "/v1/streams")
}

/// Runs the request through the router and writes the response: a stream's frames as the
/// stream's driver writes them, everything else (204, JSON errors) in one piece. The
/// connection closes afterwards.
///
/// Every write goes through the connection's [`Sink`], which the driver of a single-item
/// stream also hands to direct delivery (the watcher writing updates into the socket).
async fn stream(socket: TcpStream, router: Router, request: Request<Body>) -> io::Result<()> {
    let sink = Sink::new(socket);
    let Ok(response) = router.oneshot(request).await;
    let (mut parts, body) = response.into_parts();
    let driver = parts
        .extensions
        .remove::<StreamSlot>()
        .and_then(|slot| slot.take());
    let status = parts.status;
    let headers = parts.headers.iter().filter_map(|(name, value)| {
        let framing = name == header::CONTENT_LENGTH
            || name == header::CONNECTION
            || name == header::TRANSFER_ENCODING;
        (!framing).then(|| (name.as_str(), value.as_bytes()))
    });
    let reason = status.canonical_reason().unwrap_or("");
    let Some(driver) = driver else {
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let head = wire::head(status.as_u16(), reason, headers, Some(bytes.len()));
        sink.write(&[&head, &bytes], None).await?;
        return close(sink).await;
    };
    let head = wire::head(status.as_u16(), reason, headers, None);
    sink.write(&[&head], None).await?;
    // Neither outlives the head: a stream lives for hours, and the header map alone is
    // several hundred bytes.
    drop((head, parts, body));
    driver.run(Out::Socket(Arc::clone(&sink))).await;
    // The driver has returned and closed direct delivery: nothing writes after this.
    sink.write(&[wire::TERMINATOR], None).await?;
    close(sink).await
}

/// Sends FIN once the response is complete. A delivery that raced with the stream's end may
/// hold the sink for a moment; then the socket closes when that last reference drops.
async fn close(sink: Arc<Sink>) -> io::Result<()> {
    match Arc::try_unwrap(sink) {
        Ok(sink) => sink.into_socket().shutdown().await,
        Err(_) => Ok(()),
    }
}

/// Serves the connection with hyper, replaying the bytes already read.
async fn hand_to_hyper(
    socket: TcpStream,
    read: Vec<u8>,
    router: Router,
    shutdown: CancellationToken,
) {
    let io = TokioIo::new(Prefixed {
        prefix: read,
        pos: 0,
        io: socket,
    });
    let service = TowerToHyperService::new(router);
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A socket with some bytes already read from it, which are read again first.
struct Prefixed {
    prefix: Vec<u8>,
    pos: usize,
    io: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
