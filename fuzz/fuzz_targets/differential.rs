//! The core against the naive reference model, on call sequences drawn
//! from arbitrary bytes (4 bytes a call): any difference is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_ratelimit::reference::{self, Call};

fuzz_target!(|data: &[u8]| {
    let calls: Vec<Call> = data
        .chunks_exact(4)
        .map(|c| {
            // Small windows and maxes keep the model's brute force cheap.
            let tick = i64::from(c[1] % 50) - 20;
            let window = u64::from(c[2] % 64) + 1;
            let max = u64::from(c[3] % 16) + 1;
            let cost = u64::from(c[3] / 16) + 1;
            match c[0] % 8 {
                7 => Call::Undo(u64::from(c[1] % 4)),
                kind => Call::Request {
                    check: kind < 5,
                    tick,
                    window,
                    max,
                    cost,
                },
            }
        })
        .collect();
    if let Err(difference) = reference::compare(&calls) {
        panic!("{difference}");
    }
});
