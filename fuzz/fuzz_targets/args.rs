//! Every command's argument parsing, on arbitrary arguments (the input
//! split on NUL bytes): an error or a request, never a panic, and a
//! request only within the documented ranges.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_ratelimit::args::{self, MAX_WINDOW_MS};

fuzz_target!(|data: &[u8]| {
    let words: Vec<&[u8]> = data.split(|&b| b == 0).collect();
    let cap = 1_000;
    if let Ok(request) = args::parse_request(&words, cap) {
        assert!(request.window().get() <= MAX_WINDOW_MS);
        assert!(request.cost().get() <= cap);
    }
    let _ = args::parse_refund(&words);
    if let Ok(record) = args::parse_record(&words) {
        assert!(record.at > 0 && record.window.get() <= MAX_WINDOW_MS);
    }
});
