//! Decoding a stored log (the RDB payload: window, entry count, oldest
//! time, entry bytes; version 3's block beside them; and version 1's unit
//! gaps) from arbitrary bytes: an error or a log that behaves, never a
//! panic or an out-of-bounds read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratelimit_core::log::{Encoded, Entry, TimeLog, TIMES};
use ratelimit_core::state::State;

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let oldest = i64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let len = u64::from(u16::from_le_bytes([data[8], data[9]]));
    let window = u64::from(u16::from_le_bytes([data[10], data[11]]));
    let stored = Encoded {
        window,
        len,
        oldest,
        entries: data[12..].to_vec(),
    };
    if let Ok(log) = TimeLog::decode(&stored) {
        assert_eq!(log.len(), len);
        exercise(log);
    }
    // The block's end: the last 8 bytes, read a second time.
    let tail: [u8; 8] = data[data.len() - 8..].try_into().expect("8 bytes");
    if let Ok(state) = State::decode(&stored, i64::from_le_bytes(tail)) {
        let (saved, blocked_until) = state.encode();
        assert_eq!(State::decode(&saved, blocked_until).as_ref(), Ok(&state));
        let newest = state.log().newest().map_or(0, |e| e.at);
        assert!(state.blocked_until().is_none_or(|until| until > newest));
        assert!(!state.is_empty());
        exercise(state.log().clone());
    }
    if let Ok(log) = TimeLog::decode_units(oldest, len, &data[12..]) {
        exercise(log);
    }
});

/// Walks a decoded log both ways, round-trips it and empties it.
fn exercise(mut log: TimeLog) {
    let view = log.view();
    let entries: Vec<Entry> = view.entries().collect();
    assert_eq!(entries.len() as u64, view.len());
    assert!(view.entries().rev().eq(entries.iter().rev().copied()));
    assert!(entries.windows(2).all(|w| w[0].at <= w[1].at), "sorted");
    assert!(entries.iter().all(|e| e.cost > 0 && TIMES.contains(&e.at)));
    // Only what the module could hold itself: nothing expired under the
    // window, relative to the newest entry.
    if let (Some(oldest), Some(newest)) = (entries.first(), entries.last()) {
        assert!(oldest.at > newest.at - view.window as i64);
    }
    assert_eq!(TimeLog::decode(&log.encode()).as_ref(), Ok(&log));
    let total: u128 = entries.iter().map(|e| u128::from(e.cost)).sum();
    assert_eq!(log.total(), total);
    let mut refunded = 0u128;
    while !log.is_empty() {
        refunded += u128::from(log.refund(u64::MAX / 2));
    }
    assert_eq!(refunded, total);
}
