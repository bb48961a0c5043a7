#![no_main]
//! Path ids: any string either parses to a positive i64 that prints back the same, or is a
//! 400 — never a panic.
use libfuzzer_sys::fuzz_target;
use runwire::http::params::parse_id;

fuzz_target!(|raw: &str| {
    if let Ok(id) = parse_id(raw, "id") {
        assert!(id > 0);
        assert_eq!(id.to_string(), raw);
    }
});
