//! The one place that formats SSE messages.

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use std::convert::Infallible;
use std::time::Duration;

pub fn retry(ms: u64) -> Event {
    Event::default().retry(Duration::from_millis(ms))
}

pub fn snapshot(id: Option<&str>, data: &str) -> Event {
    with_id(Event::default().event("snapshot").data(data), id)
}

pub fn update(id: Option<&str>, data: &str) -> Event {
    with_id(Event::default().event("update").data(data), id)
}

/// Why a stream ended: `terminal`, `forbidden` or `token_expired`.
pub fn end(reason: &str) -> Event {
    Event::default()
        .event("end")
        .data(format!(r#"{{"reason":"{reason}"}}"#))
}

fn with_id(event: Event, id: Option<&str>) -> Event {
    match id {
        Some(id) => event.id(id),
        None => event,
    }
}

/// Wraps an event stream into the response: SSE headers, keep-alive comments, and
/// `X-Accel-Buffering: no` so nginx-style proxies pass events through immediately.
pub fn response<S>(events: S, keepalive: Duration) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(keepalive))
        .into_response();
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response
}
