//! The SSE response of a stream. Its body is the stream's driver, kept in a slot: the
//! connection front takes it out and drives it straight into the socket (with direct
//! delivery); a connection served by hyper (HTTP/2, HTTP/1.0, …) drives it into the body
//! through a channel instead. Either way the same driver runs, once.

use crate::stream::{Out, Stream};
use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Frames buffered between the driver and hyper's body.
const CHANNEL_FRAMES: usize = 16;

/// The response extension that carries a stream to whoever serves the connection.
#[derive(Clone)]
pub(crate) struct StreamSlot(Arc<Mutex<Option<Stream>>>);

impl StreamSlot {
    /// The stream, to the first caller only.
    pub(crate) fn take(&self) -> Option<Stream> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The streaming response: SSE headers, and `X-Accel-Buffering: no` so nginx-style proxies
/// pass events through immediately.
pub(crate) fn response(stream: Stream) -> Response {
    let slot = StreamSlot(Arc::new(Mutex::new(Some(stream))));
    let body_slot = slot.clone();
    let frames = async_stream::stream! {
        if let Some(stream) = body_slot.take() {
            let (tx, mut rx) = mpsc::channel(CHANNEL_FRAMES);
            let deadline = stream.write_timeout();
            tokio::spawn(stream.run(Out::Channel(tx, deadline)));
            while let Some(frame) = rx.recv().await {
                yield Ok::<_, std::convert::Infallible>(frame);
            }
        }
    };
    let mut response = Response::new(Body::from_stream(frames));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response.extensions_mut().insert(slot);
    response
}
