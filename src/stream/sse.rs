//! The one place that formats SSE messages. Messages are rendered to `Bytes` frames; the
//! frames a state shares with every subscriber are rendered once, into the state (a run with
//! 10,000 watchers formats its update once, not 10,000 times).

use crate::model::State;
use bytes::{BufMut, Bytes, BytesMut};

/// One SSE message, ready to write.
pub(crate) type Frame = Bytes;

pub(crate) fn retry(ms: u64) -> Frame {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// A comment line: keeps proxies and browsers from timing out an idle stream.
pub(crate) fn keepalive() -> Frame {
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

/// Why a stream ended: `terminal`, `forbidden`, `token_expired`, `unavailable` or `gone`.
pub(crate) fn end(reason: &str) -> Frame {
    event("end", None, &format!(r#"{{"reason":"{reason}"}}"#))
}

/// A state's `update` with its own id, as one HTTP/1.1 chunk: what direct delivery writes
/// into every viewer's socket, rendered on first use.
pub(crate) fn update_chunk(state: &State) -> &Bytes {
    state.update_wire.get_or_init(|| {
        crate::wire::chunk(&event("update", Some(&state.event_id), state.json.get()))
    })
}

/// A run's `update` in the workspace feed (no id), rendered on first use.
pub(crate) fn feed_update(state: &State) -> &Bytes {
    state
        .feed_wire
        .get_or_init(|| event("update", None, state.json.get()))
}

/// A run's or card's `update` in a workspace feed that shares a `/v1/streams` stream with
/// item events: its own event name, and the feed's workspace, so no item watcher mistakes it
/// for its item's. Rendered for each stream, not kept in the state as the feed's own
/// update is: such streams are few.
pub(crate) fn workspace_update(workspace_id: i64, state: &State) -> Frame {
    let data = format!(
        r#"{{"type":"workspace_update","workspace_id":{workspace_id},"state":{}}}"#,
        state.json.get()
    );
    event("workspace_update", None, &data)
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
