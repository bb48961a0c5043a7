//! Every HTTP/1.1 byte runwire writes by hand: response heads, body chunks and the body's
//! terminator. The connection front writes heads and terminators; streams write their
//! events as chunks through their socket's sink. Nothing else frames HTTP.

use bytes::Bytes;
use std::io::{self, Write};

/// The chunk that ends a chunked body.
pub(crate) const TERMINATOR: &[u8] = b"0\r\n\r\n";
/// What follows a chunk's data.
pub(crate) const CHUNK_END: &[u8] = b"\r\n";
/// Longest chunk-size line: 16 hex digits and CRLF.
pub(crate) const CHUNK_SIZE_MAX: usize = 18;

/// The `<hex size>\r\n` line of a chunk of `len` bytes, without allocating.
pub(crate) fn chunk_size(buf: &mut [u8; CHUNK_SIZE_MAX], len: usize) -> &[u8] {
    let mut cursor = io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{len:x}\r\n");
    let n = cursor.position() as usize;
    &buf[..n]
}

/// `data` as one whole chunk (for frames shared by many sockets).
pub(crate) fn chunk(data: &[u8]) -> Bytes {
    let mut size = [0u8; CHUNK_SIZE_MAX];
    let size = chunk_size(&mut size, data.len());
    let mut out = Vec::with_capacity(size.len() + data.len() + CHUNK_END.len());
    out.extend_from_slice(size);
    out.extend_from_slice(data);
    out.extend_from_slice(CHUNK_END);
    Bytes::from(out)
}

/// A response head: the status line, `headers`, a `date`, then the framing: chunked for a
/// stream (`body_len` None), else a content length (none at all for a 204). The connection
/// always closes after the response.
pub(crate) fn head<'a>(
    status: u16,
    reason: &str,
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    body_len: Option<usize>,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    let _ = write!(head, "HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in headers {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    let _ = write!(
        head,
        "date: {}\r\n",
        httpdate::fmt_http_date(std::time::SystemTime::now())
    );
    match body_len {
        None => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Some(_) if status == 204 => {}
        Some(len) => {
            let _ = write!(head, "content-length: {len}\r\n");
        }
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_and_heads() {
        assert_eq!(&chunk(b"hello")[..], b"5\r\nhello\r\n");
        let mut buf = [0u8; CHUNK_SIZE_MAX];
        assert_eq!(chunk_size(&mut buf, usize::MAX), b"ffffffffffffffff\r\n");
        let head = head(204, "No Content", std::iter::empty(), Some(0));
        let text = String::from_utf8(head).unwrap();
        assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"));
        assert!(!text.contains("content-length"));
        assert!(text.ends_with("connection: close\r\n\r\n"));
    }
}
