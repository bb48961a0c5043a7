#![no_main]
//! Request heads read by the connection front: parsing arbitrary bytes never panics.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = runwire::parsing::parse_head(bytes);
});
