//! Decoding a stored log (the RDB payload: entry count, oldest time, gap
//! bytes) from arbitrary bytes: an error or a log that behaves, never a
//! panic or an out-of-bounds read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_ratelimit::log::TimeLog;

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let oldest = i64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let len = u64::from(u16::from_le_bytes([data[8], data[9]]));
    let Ok(mut log) = TimeLog::decode(oldest, len, &data[10..]) else {
        return;
    };
    assert_eq!(log.len(), len);
    let entries: Vec<i64> = log.iter().collect();
    assert_eq!(entries.len() as u64, len);
    assert!(entries.windows(2).all(|w| w[0] <= w[1]), "sorted");
    assert_eq!(log.oldest(), entries.first().copied());
    assert_eq!(log.newest(), entries.last().copied());
    // Taking entries from both ends gives them back in order.
    let (mut front, mut back) = (0, entries.len());
    while front < back {
        if (front + back) % 2 == 0 {
            assert_eq!(log.pop_oldest(), Some(entries[front]));
            front += 1;
        } else {
            back -= 1;
            assert_eq!(log.pop_newest(), Some(entries[back]));
        }
    }
    assert!(log.is_empty());
});
