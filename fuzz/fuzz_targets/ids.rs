#![no_main]
//! Path ids: any string either parses to a positive i64 written in plain decimal digits
//! (leading zeros allowed), or is a 400 — never a panic.
use libfuzzer_sys::fuzz_target;
use runwire::parsing::parse_id;

fuzz_target!(|raw: &str| {
    if let Ok(id) = parse_id(raw, "id") {
        assert!(id > 0);
        assert!(raw.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(id.to_string(), raw.trim_start_matches('0'));
    }
});
