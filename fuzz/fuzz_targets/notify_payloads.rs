#![no_main]
//! NOTIFY payloads are untrusted input: parsing never panics.
use libfuzzer_sys::fuzz_target;
use runwire::parsing::Doorbell;

fuzz_target!(|payload: &str| {
    let _ = Doorbell::parse(payload);
});
