//! Every command's argument parsing, on arbitrary arguments (the input
//! split on NUL bytes): an error or a call, never a panic, and a call only
//! within the documented ranges.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratelimit_core::args::{self, GcraSyntax};
use ratelimit_core::gcra::{MAX_EXACT, MAX_PERIOD};
use ratelimit_core::log::{MAX_WINDOW, TIMES};

fuzz_target!(|data: &[u8]| {
    let words: Vec<&[u8]> = data.split(|&b| b == 0).collect();
    if let Ok(call) = args::parse_limit_call(&words) {
        let request = call.request;
        let limits = request.limits();
        assert!(limits
            .windows(2)
            .all(|pair| pair[0].window < pair[1].window));
        assert!(limits.iter().all(|l| l.window.get() <= MAX_WINDOW));
        assert!(limits.iter().all(|l| request.cost() <= l.max));
        assert!(request.precision() <= limits[0].window);
        assert!(request.block().is_none_or(|ms| ms.get() <= MAX_WINDOW));
    }
    if let Ok(call) = args::parse_multi_call(&words) {
        assert!((1..=16).contains(&call.calls.len()));
        assert!(call
            .calls
            .iter()
            .all(|c| c.request.precision() <= c.request.limits()[0].window));
    }
    if let Ok(call) = args::parse_charge(&words) {
        let charge = call.request;
        let limits = charge.limits();
        assert!(limits
            .windows(2)
            .all(|pair| pair[0].window < pair[1].window));
        assert!(limits.iter().all(|l| l.window.get() <= MAX_WINDOW));
        assert!(charge.cost().get() <= i64::MAX as u64);
        assert!(charge.precision() <= limits[0].window);
    }
    if let Ok(call) = args::parse_multi_charge(&words) {
        assert!((1..=16).contains(&call.calls.len()));
        assert!(call
            .calls
            .iter()
            .all(|c| c.request.precision() <= c.request.limits()[0].window));
    }
    if let Ok(call) = args::parse_multi_undo(&words) {
        assert!((1..=16).contains(&call.keys.len()));
    }
    let positions = args::key_positions(&words);
    assert!(positions.start == 2 && positions.end <= words.len().max(2));
    let _ = args::parse_undo(&words);
    if let Ok(call) = args::parse_record(&words) {
        let record = call.record;
        assert!(TIMES.contains(&record.at) && record.window.get() <= MAX_WINDOW);
    }
    if let Ok(call) = args::parse_multi_record(&words) {
        assert_eq!(call.keys.len(), call.records.len());
        assert!(call
            .records
            .iter()
            .all(|r| TIMES.contains(&r.at) && r.window.get() <= MAX_WINDOW));
    }
    if let Ok(call) = args::parse_block_until(&words) {
        assert!(call.until.is_none_or(|until| until > 0));
    }
    let _ = args::parse_unblock(&words);
    if let Ok(call) = args::parse_widen(&words) {
        assert!(call.window.get() <= MAX_WINDOW);
    }
    for syntax in [GcraSyntax::Module, GcraSyntax::Cell, GcraSyntax::Redis] {
        if let Ok(call) = args::parse_gcra(&words, syntax) {
            let limit = call.limit;
            assert!((1..=MAX_PERIOD).contains(&limit.period()));
            assert!((1..=MAX_EXACT).contains(&limit.count()));
            assert!(limit.burst() >= 1 && limit.burst() <= MAX_EXACT / limit.period());
            assert!(call.tokens <= MAX_EXACT);
            // Only RATELIMIT.GCRA settles (CHARGE, REFUND).
            assert!(syntax == GcraSyntax::Module || call.op == args::GcraOp::Request);
        }
    }
    if let Ok(call) = args::parse_gcra_set(&words) {
        assert!(call.bucket.level() >= 1);
        assert!(call.expires_at.is_none_or(|t| t > call.bucket.at()));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = args::parse_aliases(text);
    }
});
