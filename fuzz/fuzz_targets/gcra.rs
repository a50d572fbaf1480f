//! The token bucket against redis-cell's formulation over exact fractions
//! (`reference::gcra`), on call sequences drawn from arbitrary bytes (5
//! bytes a call: limits changed at will, the clock stepping either way,
//! requests, CHARGE and REFUND);
//! and a bucket read from arbitrary stored numbers (the RDB payload, the
//! replicated GCRASET): refused, or holding exactly what was stored. Any
//! difference is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratelimit_core::args::GcraOp;
use ratelimit_core::gcra::Bucket;
use ratelimit_core::reference::gcra::{self, GcraCall};

fuzz_target!(|data: &[u8]| {
    if let Some(stored) = data.get(..24) {
        let number = |i: usize| u64::from_le_bytes(stored[i..i + 8].try_into().expect("8 bytes"));
        let (at, period, level) = (number(0) as i64, number(8), number(16));
        if let Ok(bucket) = Bucket::new(at, period, level) {
            assert_eq!((bucket.at(), bucket.period(), bucket.level()), (at, period, level));
        }
    }
    let calls: Vec<GcraCall> = data
        .chunks_exact(5)
        .map(|c| GcraCall {
            // Mostly forward, up to a few periods; sometimes back.
            tick: i64::from(u16::from_le_bytes([c[0], c[1]]) % 3000) - 400,
            max_burst: u64::from(c[2] % 8),
            count: u64::from(c[2] / 8 % 16) + 1,
            // Small periods, and the usual round ones.
            period: match c[3] % 4 {
                0 => 1000,
                1 => 60_000,
                _ => u64::from(c[3]) * 7 + 1,
            },
            tokens: u64::from(c[4] % 40 / 4),
            // Now and then a settlement (CHARGE, REFUND).
            op: match c[4] % 4 {
                0 => GcraOp::Charge,
                1 => GcraOp::Refund,
                _ => GcraOp::Request,
            },
        })
        .collect();
    if let Err(difference) = gcra::compare(&calls) {
        panic!("{difference}");
    }
});
