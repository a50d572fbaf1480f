//! An entry's bytes, and reading a stream of them from either end.
//!
//! Each entry is stored as the gap to the previous entry's time and its
//! cost, as LEB128 varints: `gap << 1 | (cost != 1)`, followed, only if
//! that low bit is set, by `cost << 1 | 1`. A busy log (the only kind that
//! holds many entries) has small gaps and mostly unit costs, so most
//! entries cost one byte; a cost of 2^32 costs five more, whatever it is
//! made of. Both ends can be read: every byte of a varint but its last has
//! the high bit set, so varint boundaries show from either side; and read
//! from the back, a varint with its low bit set can only be a cost (a gap
//! with its flag set is always followed by one), so entry boundaries show
//! too.

use super::{Entry, Millis};

pub(super) const CONTINUATION: u8 = 0x80;

pub(super) const MAX_VARINT_LEN: usize = 10;

/// Entries of a log, oldest first or (reversed) newest first.
pub struct Entries<'a>(pub(super) Cursor<'a>);

impl Iterator for Entries<'_> {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        self.0.take_front()
    }
}

impl DoubleEndedIterator for Entries<'_> {
    fn next_back(&mut self) -> Option<Entry> {
        self.0.take_back()
    }
}

/// Reads an entry stream (held as one or two slices, as a `VecDeque`
/// keeps it) from both ends. Only used on streams this module wrote or
/// validated, so every entry is whole.
#[derive(Clone, Copy)]
pub(super) struct Cursor<'a> {
    pub(super) first: &'a [u8],
    pub(super) second: &'a [u8],
    /// Byte positions: entries lie in `front..back`.
    pub(super) front: usize,
    pub(super) back: usize,
    /// The time the next front entry's gap counts from.
    pub(super) front_time: Millis,
    /// The time of the next back entry.
    pub(super) back_time: Millis,
}

#[derive(Clone, Copy)]
pub(super) struct Varint {
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) value: u64,
}

impl<'a> Cursor<'a> {
    pub(super) fn over(
        first: &'a [u8],
        second: &'a [u8],
        base: Millis,
        newest: Millis,
    ) -> Cursor<'a> {
        Cursor {
            first,
            second,
            front: 0,
            back: first.len() + second.len(),
            front_time: base,
            back_time: newest,
        }
    }

    pub(super) fn byte(&self, at: usize) -> u8 {
        match at.checked_sub(self.first.len()) {
            None => self.first[at],
            Some(at) => self.second.get(at).copied().unwrap_or(0),
        }
    }

    /// The varint that starts at byte `start`.
    pub(super) fn varint_at(&self, start: usize) -> Varint {
        let mut value = 0u64;
        let mut at = start;
        while at < self.back {
            let byte = self.byte(at);
            value |= u64::from(byte & !CONTINUATION) << (7 * (at - start) as u32).min(63);
            at += 1;
            if byte & CONTINUATION == 0 {
                break;
            }
        }
        Varint {
            start,
            end: at,
            value,
        }
    }

    /// The varint that ends just before byte `end`: it starts after the
    /// previous byte without the continuation bit (the end of the varint
    /// before it), or at the front.
    pub(super) fn varint_before(&self, end: usize) -> Varint {
        let start = (self.front..end.saturating_sub(1))
            .rev()
            .find(|&i| self.byte(i) & CONTINUATION == 0)
            .map_or(self.front, |i| i + 1);
        self.varint_at(start)
    }

    pub(super) fn take_front(&mut self) -> Option<Entry> {
        if self.front >= self.back {
            return None;
        }
        let head = self.varint_at(self.front);
        let (cost, end) = if head.value & 1 == 1 {
            let cost = self.varint_at(head.end);
            (cost.value >> 1, cost.end)
        } else {
            (1, head.end)
        };
        let entry = Entry {
            at: self.front_time.saturating_add_unsigned(head.value >> 1),
            cost,
        };
        self.front = end;
        self.front_time = entry.at;
        Some(entry)
    }

    pub(super) fn take_back(&mut self) -> Option<Entry> {
        if self.front >= self.back {
            return None;
        }
        let last = self.varint_before(self.back);
        // Read from the back, an odd varint is a cost and the entry's head
        // precedes it; an even one is a head with no cost after it.
        let (head, cost) = if last.value & 1 == 1 {
            (self.varint_before(last.start), last.value >> 1)
        } else {
            (last, 1)
        };
        let entry = Entry {
            at: self.back_time,
            cost,
        };
        self.back = head.start;
        self.back_time = self.back_time.saturating_sub_unsigned(head.value >> 1);
        Some(entry)
    }
}

/// Appends `entry`, whose gap counts from `previous` (not after it).
pub(super) fn push_entry(out: &mut impl Extend<u8>, previous: Millis, entry: Entry) {
    let gap = entry.at.abs_diff(previous);
    let has_cost = entry.cost != 1;
    push_varint(out, gap << 1 | u64::from(has_cost));
    if has_cost {
        push_varint(out, entry.cost << 1 | 1);
    }
}

pub(super) fn push_varint(out: &mut impl Extend<u8>, mut value: u64) {
    let mut encoded = [0u8; MAX_VARINT_LEN];
    let mut used = 0;
    while value >= u64::from(CONTINUATION) {
        encoded[used] = (value as u8) | CONTINUATION;
        value >>= 7;
        used += 1;
    }
    encoded[used] = value as u8;
    out.extend(encoded[..=used].iter().copied());
}

/// Reads one varint, or `None` if the bytes end inside it or it is too long.
pub(super) fn read_varint(bytes: &mut impl Iterator<Item = u8>) -> Option<u64> {
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
