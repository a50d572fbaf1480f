//! The core against the naive reference model, on call sequences drawn
//! from arbitrary bytes (6 bytes a call), blocks, UNBLOCK and CHARGE
//! included: any difference is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratelimit_core::reference::{self, Call};

fuzz_target!(|data: &[u8]| {
    let calls: Vec<Call> = data
        .chunks_exact(6)
        .map(|c| {
            // Small windows and maxes keep the model's brute force cheap.
            let tick = i64::from(c[1] % 50) - 20;
            let limit = |byte: u8| (u64::from(byte % 64) + 1, u64::from(byte / 64) * 5 + 1);
            let mut limits = vec![limit(c[2])];
            if c[0] & 0x10 != 0 {
                limits.push(limit(c[3]));
            }
            if c[0] & 0x20 != 0 {
                limits.push(limit(c[4]));
            }
            let cost = u64::from(c[5] % 8) + 1;
            let precision = if c[0] & 0x40 != 0 {
                u64::from(c[5] / 8 % 16) + 1
            } else {
                1
            };
            // Blocks from 1 ms to a few calls' worth of clock.
            let block = (c[0] & 0x80 != 0).then(|| u64::from(c[1] / 50) * 40 + 1);
            match c[0] % 8 {
                // A settlement: its cost may be above any max.
                6 if c[0] & 0x08 != 0 => Call::Charge {
                    tick,
                    limits,
                    cost: u64::from(c[5] % 24) + 1,
                    precision,
                },
                7 if c[0] & 0x08 != 0 => Call::Unblock,
                7 => Call::Undo(u64::from(c[1] % 6)),
                kind => Call::Request {
                    check: kind < 5,
                    tick,
                    limits,
                    cost,
                    precision,
                    block,
                },
            }
        })
        .collect();
    if let Err(difference) = reference::compare(&calls) {
        panic!("{difference}");
    }
});
