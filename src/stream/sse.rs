//! The one place that formats SSE messages.
//!
//! Messages are rendered to `Bytes` frames. A state's `update` is rendered once per state and
//! shared by every subscriber through [`FrameCache`] (a run with 10,000 watchers formats its
//! update once, not 10,000 times).

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use std::convert::Infallible;
use std::sync::OnceLock;

/// One SSE message, ready to write.
pub type Frame = Bytes;

pub fn retry(ms: u64) -> Frame {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// A comment line: keeps proxies and browsers from timing out an idle stream.
pub fn keepalive() -> Frame {
    Bytes::from_static(b":\n\n")
}

/// `event: <name>`, the data (one `data:` line per line of it), and an optional `id:`.
pub fn event(name: &str, id: Option<&str>, data: &str) -> Frame {
    let mut out = BytesMut::with_capacity(name.len() + data.len() + 32);
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    out.put_u8(b'\n');
    // SSE ends a line at CR, LF or CRLF: each of them starts a new `data:` line, so no
    // input can smuggle in a field of its own.
    for line in data.replace("\r\n", "\n").split(['\n', '\r']) {
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    if let Some(id) = id {
        // An id with a line break or NUL would corrupt the stream; ours are numbers and dots.
        if !id.contains(['\n', '\r', '\0']) {
            out.put_slice(b"id: ");
            out.put_slice(id.as_bytes());
            out.put_u8(b'\n');
        }
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// Why a stream ended: `terminal`, `forbidden` or `token_expired`.
pub fn end(reason: &str) -> Frame {
    event("end", None, &format!(r#"{{"reason":"{reason}"}}"#))
}

/// The frames of one state that are worth sharing, rendered on first use. Snapshots are not
/// cached: each is written once per subscriber anyway, and a cached copy would stay in memory
/// for as long as anyone watches the item (with one viewer per run, that is a second copy of
/// every run's JSON).
#[derive(Debug, Default)]
pub struct FrameCache {
    /// The `update` with the state's id as an HTTP/1.1 chunk, as direct delivery writes it to
    /// every subscriber.
    update_chunk: OnceLock<Bytes>,
    /// An `update` without an id, as the workspace feed sends it.
    feed_update: OnceLock<Frame>,
}

impl FrameCache {
    /// `id` is only called the first time: the hot path is a clone of the cached chunk.
    pub fn update_chunk(&self, id: impl FnOnce() -> String, data: &str) -> Bytes {
        self.update_chunk
            .get_or_init(|| super::direct::chunk(&event("update", Some(&id()), data)))
            .clone()
    }

    pub fn feed_update(&self, data: &str) -> Frame {
        self.feed_update
            .get_or_init(|| event("update", None, data))
            .clone()
    }
}

/// The streaming response: SSE headers, and `X-Accel-Buffering: no` so nginx-style proxies
/// pass events through immediately.
pub fn response<S>(frames: S) -> Response
where
    S: Stream<Item = Frame> + Send + 'static,
{
    let body = Body::from_stream(frames.map(Ok::<_, Infallible>));
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_the_spec() {
        assert_eq!(
            &event("update", Some("7"), "{}")[..],
            b"event: update\ndata: {}\nid: 7\n\n"
        );
        assert_eq!(
            &event("x", None, "a\nb")[..],
            b"event: x\ndata: a\ndata: b\n\n"
        );
        assert_eq!(
            &end("terminal")[..],
            b"event: end\ndata: {\"reason\":\"terminal\"}\n\n"
        );
        assert_eq!(&retry(1000)[..], b"retry: 1000\n\n");
        assert!(!String::from_utf8_lossy(&event("x", Some("1\n2"), "d")).contains("id:"));
        assert_eq!(
            &event("x", None, "a\revent: evil")[..],
            b"event: x\ndata: a\ndata: event: evil\n\n"
        );
    }
}
