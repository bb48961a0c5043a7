//! Replays the corpus of the `request_path` fuzz target (fuzz/corpus/request_path) through the
//! whole request path — connection front, hyper, router, tokens, handlers — on every
//! `cargo test`, so CI exercises it without a nightly compiler. New findings of
//! `cargo fuzz run request_path` belong in that directory.

#[path = "../fuzz/request_path.rs"]
mod request_path;

#[test]
fn the_request_path_corpus_replays_cleanly() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/request_path");
    let mut inputs: Vec<_> = std::fs::read_dir(dir)
        .expect("corpus directory")
        .map(|e| e.unwrap().path())
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 20, "corpus is missing: {}", inputs.len());
    let harness = request_path::Harness::new();
    for input in inputs {
        eprintln!("replaying {}", input.display());
        harness.run(&std::fs::read(&input).unwrap());
    }
}
