#![no_main]
//! `Last-Event-ID` headers: only the exact id of the current state counts as "seen", and the
//! SSE writer never lets an id break the framing.
use libfuzzer_sys::fuzz_target;
use runwire::parsing::already_seen;
use runwire::parsing::sse_event;

fuzz_target!(|input: (&str, &str)| {
    let (header, id) = input;
    if already_seen(Some(header), id) {
        assert_eq!(header.trim(), id);
    }
    let frame = sse_event("update", Some(header), id);
    let text = String::from_utf8_lossy(&frame);
    assert!(text.ends_with("\n\n"));
    // Every line is a field this writer emits, so no input can inject an event.
    let body = &text[..text.len() - 2];
    // (Split as an SSE parser does: CR, LF and CRLF all end a line.)
    assert!(body
        .split(['\n', '\r'])
        .all(|l| l.starts_with("event: ") || l.starts_with("data: ") || l.starts_with("id: ")));
});
