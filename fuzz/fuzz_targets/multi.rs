//! The core's multi-key calls (MCHECK, MPEEK, MCHARGE, MUNDO over three
//! keys, with blocks, and UNBLOCK)
//! against the naive reference model, on call sequences drawn from
//! arbitrary bytes (8 bytes a call): any difference is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratelimit_core::reference::{self, MultiCall};

fuzz_target!(|data: &[u8]| {
    let calls: Vec<MultiCall> = data
        .chunks_exact(8)
        .map(|c| {
            // Small windows and maxes keep the model's brute force cheap.
            let limit = |byte: u8| (u64::from(byte % 64) + 1, u64::from(byte / 64) * 5 + 1);
            // Bits 0-2 of the first byte name the keys in the call, bit 3
            // gives the first of them a second limit.
            let mut keys: Vec<(usize, Vec<(u64, u64)>)> = (0..3)
                .filter(|k| c[0] & (1 << k) != 0)
                .map(|k| (k, vec![limit(c[2 + k])]))
                .collect();
            if let Some((_, limits)) = keys.first_mut().filter(|_| c[0] & 0x08 != 0) {
                limits.push(limit(c[5]));
            }
            let cost = u64::from(c[6] % 8) + 1;
            let precision = if c[0] & 0x10 != 0 {
                u64::from(c[6] / 8 % 16) + 1
            } else {
                1
            };
            // Blocks from 1 ms to a few calls' worth of clock.
            let block = (c[0] & 0x20 != 0).then(|| u64::from(c[1] / 50) * 40 + 1);
            match c[7] % 8 {
                6 if c[0] & 0x40 != 0 => MultiCall::Charge {
                    tick: i64::from(c[1] % 50) - 20,
                    keys,
                    cost: u64::from(c[6] % 24) + 1,
                    precision,
                },
                7 if c[0] & 0x40 != 0 => MultiCall::Unblock(usize::from(c[2] % 3)),
                7 => MultiCall::Undo {
                    keys: keys.iter().map(|(k, _)| *k).collect(),
                    units: u64::from(c[1] % 6),
                },
                kind => MultiCall::Request {
                    check: kind < 5,
                    tick: i64::from(c[1] % 50) - 20,
                    keys,
                    cost,
                    precision,
                    block,
                },
            }
        })
        .filter(|call| {
            !matches!(call, MultiCall::Request { keys, .. } | MultiCall::Charge { keys, .. } if keys.is_empty())
        })
        .collect();
    if let Err(difference) = reference::compare_multi(3, &calls) {
        panic!("{difference}");
    }
});
