//! The whole request path under arbitrary input, shared by the `request_path` fuzz target and
//! the test that replays its seeds (fuzz/seeds/request_path) on every `cargo test`
//! (tests/fuzz_corpus.rs).
//!
//! A real server (connection front, hyper, router, token checks, handlers) on 127.0.0.1:0,
//! without a database: the pool points at a closed port and the listener never connects, so
//! every read answers 503 at once and an input costs one TCP round trip.
//!
//! Input format, so that mutations reach a validly signed token: the first line is the JSON
//! claims of a token the harness signs with the server's secret; the rest is sent as is,
//! with every `$TOKEN` replaced by the signed token. A first line that is not JSON is sent
//! too, and `$TOKEN` then stays literal.
//!
//! Checked for every input: nothing panics (in any task), the server answers within a few
//! seconds or closes, every response is HTTP/1.1 (or HTTP/2 after a preface), an error with
//! a body has the API's JSON shape, and the server still serves `/healthz` afterwards.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-secret";
/// Longest an input may take; a request the server neither answers nor closes is a bug.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

static PANICKED: AtomicBool = AtomicBool::new(false);

pub struct Harness {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    _running: runwire::Running,
}

impl Harness {
    pub fn new() -> Harness {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            // Panics in the server's tasks do not reach the caller: record them, and keep
            // whatever hook was there (libFuzzer's aborts).
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                PANICKED.store(true, Ordering::SeqCst);
                previous(info);
            }));
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let running = runtime.block_on(async {
            let mut settings = runwire::Settings::defaults();
            settings.bind = "127.0.0.1:0".parse().unwrap();
            settings.jwt_secret = Some(SECRET.to_string());
            settings.request_head_timeout_secs = 1;
            settings.idle_timeout_secs = 1;
            settings.db_acquire_timeout_secs = 1;
            let options =
                runwire::connect_options("postgres://runwire@127.0.0.1:1/none").expect("url");
            let pool = runwire::pool_options(&settings).connect_lazy_with(options);
            runwire::Server::build(settings, pool)
                .await
                .expect("server")
                .start_http()
        });
        Harness {
            runtime,
            addr: running.addr,
            _running: running,
        }
    }

    /// Sends one input and checks everything the module comment promises.
    pub fn run(&self, input: &[u8]) {
        let request = prepare(input);
        let response = self.runtime.block_on(exchange(self.addr, &request, true));
        check(&response);
        let health = self.runtime.block_on(exchange(
            self.addr,
            b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            false,
        ));
        assert!(
            health.starts_with(b"HTTP/1.1 200"),
            "the server stopped answering"
        );
        assert!(
            !PANICKED.load(Ordering::SeqCst),
            "a task panicked on this input"
        );
    }
}

// The fuzz target keeps one harness in a static.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Harness>();
};

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

/// The bytes to send: the claims line signed and substituted for `$TOKEN`.
fn prepare(input: &[u8]) -> Vec<u8> {
    let (first, rest) = match input.iter().position(|b| *b == b'\n') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &[][..]),
    };
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(first) else {
        return input.to_vec();
    };
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("HS256 signing cannot fail");
    let mut out = Vec::with_capacity(rest.len() + token.len());
    let mut i = 0;
    while i < rest.len() {
        if rest[i..].starts_with(b"$TOKEN") {
            out.extend_from_slice(token.as_bytes());
            i += b"$TOKEN".len();
        } else {
            out.push(rest[i]);
            i += 1;
        }
    }
    out
}

/// Writes the request, half-closes if asked, and reads until the server closes.
///
/// Inputs are half-closed so that an incomplete head ends at once instead of after the head
/// timeout. hyper treats that EOF as the client leaving (which is how it notices a vanished
/// client on a long response), so a request it serves may go unanswered: an empty answer is
/// accepted. The health check does not half-close and must be answered.
async fn exchange(addr: SocketAddr, request: &[u8], half_close: bool) -> Vec<u8> {
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    // The server may close early (a refusal); what it answered is still readable.
    let _ = socket.write_all(request).await;
    if half_close {
        let _ = socket.shutdown().await;
    }
    let mut out = Vec::new();
    match tokio::time::timeout(ANSWER_WITHIN, socket.read_to_end(&mut out)).await {
        Ok(_) => out,
        Err(_) => panic!(
            "no answer and no close within {ANSWER_WITHIN:?}; got {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
}

/// Every HTTP/1.1 response in `bytes` is well-formed, and each error with a body is JSON.
fn check(bytes: &[u8]) {
    let mut rest = bytes;
    // Nothing (closed without an answer: an incomplete head) or HTTP/2 frames end the loop
    // at once.
    while rest.starts_with(b"HTTP/1.1 ") || rest.starts_with(b"HTTP/1.0 ") {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(head)) = response.parse(rest) else {
            panic!("malformed response: {:?}", String::from_utf8_lossy(rest));
        };
        let status = response.code.expect("status");
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        let length: usize = header("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let chunked = header("transfer-encoding").is_some();
        let body = &rest[head..(head + length).min(rest.len())];
        if status >= 400 && length > 0 {
            assert_eq!(
                header("content-type").as_deref(),
                Some("application/json"),
                "error {status} is not JSON"
            );
            let v: serde_json::Value = serde_json::from_slice(body).expect("JSON error body");
            assert!(v["error"]["code"].is_string(), "{v}");
            assert!(v["error"]["message"].is_string(), "{v}");
        }
        if chunked {
            // A stream: cannot be opened without a database; stop checking here.
            return;
        }
        rest = &rest[(head + length).min(rest.len())..];
    }
}
