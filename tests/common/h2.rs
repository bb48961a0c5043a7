//! Just enough HTTP/2 (prior knowledge) to open a stream and to hold a connection the way a
//! flood does, written by hand so a test controls every frame (and never reads).

/// The client connection preface and an empty SETTINGS frame.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// A PING frame (as a client sends to keep a connection alive).
pub fn ping(n: u64) -> Vec<u8> {
    frame(0x6, 0, 0, &n.to_be_bytes())
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix after `flags`.
fn int(out: &mut Vec<u8>, n: u32, flags: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

fn string(out: &mut Vec<u8>, s: &str) {
    int(out, 7, 0, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// A HEADERS frame (stream 1, the whole request) for `GET path` with a bearer token.
pub fn get(path: &str, token: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    int(&mut block, 4, 0, 4); // :path, literal without indexing
    string(&mut block, path);
    int(&mut block, 4, 0, 1); // :authority
    string(&mut block, "localhost");
    int(&mut block, 4, 0, 23); // authorization
    string(&mut block, &format!("Bearer {token}"));
    frame(0x1, 0x4 | 0x1, 1, &block) // END_HEADERS | END_STREAM
}
