//! The compact storage of one key's sliding-window log.
//!
//! A log is a non-decreasing sequence of millisecond timestamps, one per
//! recorded unit of cost. Requests leave the log in the order they entered
//! it (oldest first, when they expire) or newest first (when refunded), so
//! the log is a deque that only ever changes at its two ends.
//!
//! Instead of 8 bytes per timestamp we keep the oldest timestamp and the
//! newest one in full and store the gaps between neighbours as LEB128
//! varints: a gap under 128 ms takes one byte, under 16 s two, under 4.5
//! hours three. A busy limiter (the only kind that holds many entries) has
//! small gaps, so most entries cost one byte. LEB128 can be read from both
//! ends: every byte of a varint but its last has the high bit set, so the
//! last byte of the previous varint marks where the current one begins.
//! The bytes live in a `SmallDeque`, inside the log while they are few.

use crate::small_deque::SmallDeque;

/// Milliseconds since the Unix epoch, as `RedisModule_Milliseconds` gives them.
pub type Millis = i64;

const CONTINUATION: u8 = 0x80;
const MAX_VARINT_LEN: usize = 10;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimeLog {
    /// `Some((oldest, newest))` exactly when the log holds entries.
    ends: Option<(Millis, Millis)>,
    len: u64,
    /// `len - 1` varint-encoded gaps between neighbouring entries, oldest first.
    gaps: SmallDeque,
}

/// Why bytes read back from storage do not form a log.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A varint runs past the end of the buffer or past 64 bits.
    BadVarint,
    /// The buffer holds a different number of gaps than the log has entries.
    WrongLength,
    /// The gaps add up past the end of time.
    Overflow,
}

impl TimeLog {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn oldest(&self) -> Option<Millis> {
        self.ends.map(|(oldest, _)| oldest)
    }

    pub fn newest(&self) -> Option<Millis> {
        self.ends.map(|(_, newest)| newest)
    }

    /// Appends `count` entries at `at`. A time earlier than the newest entry
    /// is taken as the newest entry's time, so the log stays sorted.
    pub fn push(&mut self, at: Millis, count: u64) {
        if count == 0 {
            return;
        }
        let (oldest, at) = match self.ends {
            None => (at, at),
            Some((oldest, newest)) => {
                let at = at.max(newest);
                // Sorted i64 timestamps differ by at most u64::MAX.
                push_varint(&mut self.gaps, at.abs_diff(newest));
                (oldest, at)
            }
        };
        self.ends = Some((oldest, at));
        // Every further entry at the same time is a zero gap: one byte.
        self.gaps.extend_zeros((count - 1) as usize);
        self.len += count;
    }

    /// Removes and returns the oldest entry.
    pub fn pop_oldest(&mut self) -> Option<Millis> {
        let (oldest, newest) = self.ends?;
        if self.len == 1 {
            self.clear();
        } else {
            let gap = take_varint_front(&mut self.gaps);
            self.ends = Some((oldest.saturating_add_unsigned(gap), newest));
            self.len -= 1;
        }
        Some(oldest)
    }

    /// Removes and returns the newest entry.
    pub fn pop_newest(&mut self) -> Option<Millis> {
        let (oldest, newest) = self.ends?;
        if self.len == 1 {
            self.clear();
        } else {
            let gap = take_varint_back(&mut self.gaps);
            self.ends = Some((oldest, newest.saturating_sub_unsigned(gap)));
            self.len -= 1;
        }
        Some(newest)
    }

    fn clear(&mut self) {
        *self = TimeLog::default();
    }

    /// All entries, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = Millis> + '_ {
        let mut bytes = self.gaps.iter();
        let mut current = self.oldest();
        std::iter::from_fn(move || {
            let entry = current?;
            current = read_varint(&mut bytes).map(|gap| entry.saturating_add_unsigned(gap));
            Some(entry)
        })
    }

    /// Heap bytes held beyond the log itself, for `MEMORY USAGE`.
    pub fn heap_size(&self) -> usize {
        self.gaps.heap_size()
    }

    /// The gaps as stored, for persistence.
    pub fn gap_bytes(&self) -> impl Iterator<Item = &[u8]> {
        let (front, back) = self.gaps.as_slices();
        [front, back].into_iter()
    }

    /// Rebuilds a log from its oldest entry, its length and its gap bytes,
    /// checking every byte: the input may come from a corrupt or hostile
    /// RDB payload.
    pub fn decode(oldest: Millis, len: u64, gap_bytes: &[u8]) -> Result<TimeLog, DecodeError> {
        if len == 0 {
            return if gap_bytes.is_empty() {
                Ok(TimeLog::default())
            } else {
                Err(DecodeError::WrongLength)
            };
        }
        let mut bytes = gap_bytes.iter().copied();
        let mut newest = oldest;
        let mut gaps_read = 0u64;
        while bytes.len() > 0 {
            let gap = read_varint(&mut bytes).ok_or(DecodeError::BadVarint)?;
            newest = newest
                .checked_add_unsigned(gap)
                .ok_or(DecodeError::Overflow)?;
            gaps_read += 1;
        }
        if gaps_read != len - 1 {
            return Err(DecodeError::WrongLength);
        }
        Ok(TimeLog {
            ends: Some((oldest, newest)),
            len,
            gaps: SmallDeque::from_slice(gap_bytes),
        })
    }
}

fn push_varint(out: &mut SmallDeque, mut value: u64) {
    let mut encoded = [0u8; MAX_VARINT_LEN];
    let mut used = 0;
    while value >= u64::from(CONTINUATION) {
        encoded[used] = (value as u8) | CONTINUATION;
        value >>= 7;
        used += 1;
    }
    encoded[used] = value as u8;
    out.extend_from_slice(&encoded[..=used]);
}

/// Reads one varint, or `None` if the bytes end inside it or it is too long.
fn read_varint(bytes: &mut impl Iterator<Item = u8>) -> Option<u64> {
    let mut value = 0u64;
    for index in 0..MAX_VARINT_LEN {
        let byte = bytes.next()?;
        let bits = u64::from(byte & !CONTINUATION);
        let shift = 7 * index as u32;
        if shift == 63 && bits > 1 {
            return None;
        }
        value |= bits << shift;
        if byte & CONTINUATION == 0 {
            return Some(value);
        }
    }
    None
}

/// Only called on gaps this module wrote or validated, so a varint is whole.
fn take_varint_front(gaps: &mut SmallDeque) -> u64 {
    let end = gaps
        .iter()
        .position(|byte| byte & CONTINUATION == 0)
        .map_or(gaps.len(), |last| last + 1);
    let value = read_varint(&mut gaps.iter().take(end)).unwrap_or(0);
    gaps.drain_front(end);
    value
}

fn take_varint_back(gaps: &mut SmallDeque) -> u64 {
    // The byte before this varint is the last byte of the previous one (or
    // nothing), and only last bytes lack the continuation bit.
    let start = gaps
        .iter()
        .rev()
        .skip(1)
        .position(|byte| byte & CONTINUATION == 0)
        .map_or(0, |from_end| gaps.len() - 1 - from_end);
    let value = read_varint(&mut gaps.iter().skip(start)).unwrap_or(0);
    gaps.truncate(start);
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn log_of(times: &[Millis]) -> TimeLog {
        let mut log = TimeLog::default();
        for &t in times {
            log.push(t, 1);
        }
        log
    }

    #[test]
    fn small_gaps_take_one_byte() {
        let log = log_of(&[1_000, 1_001, 1_100, 1_100, 1_227]);
        assert_eq!(log.len(), 5);
        assert_eq!(log.gaps.len(), 4);
        assert_eq!(
            log.iter().collect::<Vec<_>>(),
            [1_000, 1_001, 1_100, 1_100, 1_227]
        );
    }

    #[test]
    fn pushing_into_the_past_is_pinned_to_the_newest_entry() {
        let log = log_of(&[500, 400]);
        assert_eq!(log.iter().collect::<Vec<_>>(), [500, 500]);
    }

    #[test]
    fn pops_from_both_ends_across_wide_gaps() {
        let mut log = log_of(&[0, 200, 20_000, 3_000_000_000, i64::MAX]);
        assert_eq!(log.pop_newest(), Some(i64::MAX));
        assert_eq!(log.pop_oldest(), Some(0));
        assert_eq!(log.newest(), Some(3_000_000_000));
        assert_eq!(log.oldest(), Some(200));
        assert_eq!(log.pop_newest(), Some(3_000_000_000));
        assert_eq!(log.pop_newest(), Some(20_000));
        assert_eq!(log.pop_newest(), Some(200));
        assert_eq!(log.pop_newest(), None);
        assert!(log.is_empty());
    }

    #[test]
    fn decode_rejects_malformed_gaps() {
        assert_eq!(TimeLog::decode(0, 2, &[0x80]), Err(DecodeError::BadVarint));
        assert_eq!(TimeLog::decode(0, 3, &[1]), Err(DecodeError::WrongLength));
        assert_eq!(TimeLog::decode(0, 0, &[1]), Err(DecodeError::WrongLength));
        assert_eq!(TimeLog::decode(0, 1, &[1]), Err(DecodeError::WrongLength));
        let too_long = [0xff; 11];
        assert_eq!(
            TimeLog::decode(0, 2, &too_long),
            Err(DecodeError::BadVarint)
        );
        let past_64_bits = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(
            TimeLog::decode(0, 2, &past_64_bits),
            Err(DecodeError::BadVarint)
        );
        let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(TimeLog::decode(1, 2, &huge), Err(DecodeError::Overflow));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(Millis, u64),
        PopOldest,
        PopNewest,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0i64..1 << 40, 1u64..30).prop_map(|(t, n)| Op::Push(t, n)),
            Just(Op::PopOldest),
            Just(Op::PopNewest),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_sorted_deque(ops in proptest::collection::vec(op(), 0..200)) {
            let mut log = TimeLog::default();
            let mut model: VecDeque<Millis> = VecDeque::new();
            for op in ops {
                match op {
                    Op::Push(t, n) => {
                        let t = model.back().map_or(t, |&newest| t.max(newest));
                        model.extend(std::iter::repeat_n(t, n as usize));
                        log.push(t, n);
                    }
                    Op::PopOldest => prop_assert_eq!(log.pop_oldest(), model.pop_front()),
                    Op::PopNewest => prop_assert_eq!(log.pop_newest(), model.pop_back()),
                }
                prop_assert_eq!(log.len(), model.len() as u64);
                prop_assert_eq!(log.oldest(), model.front().copied());
                prop_assert_eq!(log.newest(), model.back().copied());
            }
            prop_assert!(log.iter().eq(model.iter().copied()));
            let bytes: Vec<u8> = log.gap_bytes().flatten().copied().collect();
            let decoded = TimeLog::decode(log.oldest().unwrap_or(0), log.len(), &bytes);
            prop_assert_eq!(decoded.map(|d| d.iter().collect::<Vec<_>>()), Ok(model.into_iter().collect()));
        }

        #[test]
        fn decode_never_panics(oldest: i64, len in 0u64..20, bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(log) = TimeLog::decode(oldest, len, &bytes) {
                prop_assert_eq!(log.iter().count() as u64, len);
            }
        }
    }
}
