#![no_main]
//! The whole request path (head, query, token, handlers) on a real server without a database:
//! nothing panics or hangs, and every error is JSON. See ../request_path.rs. Run with the seeds:
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run request_path corpus/request_path seeds/request_path`; the
//! seeds (../seeds/request_path) are replayed by `cargo test` (tests/fuzz_corpus.rs).
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

#[path = "../request_path.rs"]
mod request_path;

static HARNESS: OnceLock<request_path::Harness> = OnceLock::new();

fuzz_target!(|input: &[u8]| {
    HARNESS.get_or_init(request_path::Harness::new).run(input);
});
