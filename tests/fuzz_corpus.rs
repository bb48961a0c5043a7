//! Replays the seed corpus of the `request_path` fuzz target (fuzz/seeds/request_path, kept in
//! git; fuzz/corpus is the fuzzer's scratch space and is not) through the whole request path —
//! connection front, hyper, router, tokens, handlers — on every `cargo test`, so CI exercises
//! it without a nightly compiler. A crash or an interesting input the fuzzer finds belongs in
//! the seeds.
//!
//! Fuzzing itself: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run request_path corpus/request_path
//! seeds/request_path -- -max_total_time=60`.

#[path = "../fuzz/request_path.rs"]
mod request_path;

#[test]
fn the_request_path_seeds_replay_cleanly() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/request_path");
    let mut inputs: Vec<_> = std::fs::read_dir(dir)
        .expect("corpus directory")
        .map(|e| e.unwrap().path())
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 20, "seeds are missing: {}", inputs.len());
    let harness = request_path::Harness::new();
    for input in inputs {
        eprintln!("replaying {}", input.display());
        harness.run(&std::fs::read(&input).unwrap());
    }
}
