//! The form a log is saved in (RDB, DUMP, digests) and read back from,
//! every byte of it checked: it may come from a corrupt or hostile payload.
//!
//! Only a log the module could hold itself is accepted: times within
//! [`TIMES`] (the bounds RECORD's arguments have), entries in time order,
//! none expired under the log's window relative to the newest, and no two
//! in one millisecond unless their costs could not share an entry. So a
//! loaded log answers, saves, digests and rewrites to the AOF exactly as
//! it loaded, on every replica and after every reload. Only the bytes'
//! spelling is made canonical (a varint with needless continuation bytes,
//! a first gap from a base before the oldest entry): the log is re-encoded
//! as it loads.

use super::codec::{push_entry, read_varint};
use super::forms::{Large, Packed, Repr};
use super::{Entry, EntryDeque, Millis, TimeLog, MAX_COST, MAX_WINDOW, TIMES};

/// Why bytes read back from storage do not form a log.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A varint runs past the end of the buffer or past 64 bits, or a
    /// cost is missing or zero.
    BadEntry,
    /// The buffer holds a different number of entries than the header says.
    WrongLength,
    /// A time is outside [`TIMES`], or before the entry preceding it.
    BadTime,
    /// The window of a log that holds entries is outside `1..=MAX_WINDOW`.
    BadWindow,
    /// Two entries share a millisecond although their costs would fit one
    /// entry, which the module never writes.
    SharedMillisecond,
    /// The oldest entry has expired under the log's window, relative to
    /// the newest: the module prunes such entries as it records.
    Expired,
    /// A block ends at or before the newest entry's time, or out of range
    /// (see `state.rs`).
    BadBlock,
    /// The key holds no entry and no block: a key that does not exist.
    Empty,
}

impl DecodeError {
    /// What went wrong, for the server's log.
    pub fn describe(&self) -> &'static str {
        match self {
            DecodeError::BadEntry => "an entry is cut short, too long, or has a zero cost",
            DecodeError::WrongLength => "the entry count differs from the header's",
            DecodeError::BadTime => "a time is out of range or out of order",
            DecodeError::BadWindow => "the window is out of range",
            DecodeError::SharedMillisecond => {
                "two entries share a millisecond whose costs would share one entry"
            }
            DecodeError::Expired => "the oldest entry expired under the log's window",
            DecodeError::BadBlock => {
                "the block ends at or before the newest entry, or out of range"
            }
            DecodeError::Empty => "the key holds no entry and no block",
        }
    }
}

/// A log as persisted: header fields and the entries re-encoded so that
/// the oldest one's gap is 0. The same log always gives the same bytes,
/// however it is kept, so digests agree between a master and its replicas.
pub struct Encoded {
    pub window: u64,
    pub len: u64,
    pub oldest: Millis,
    pub entries: Vec<u8>,
}

impl TimeLog {
    pub fn encode(&self) -> Encoded {
        let view = self.view();
        let oldest = view.entries().next().map_or(0, |e| e.at);
        let mut entries = Vec::new();
        let mut previous = oldest;
        for entry in view.entries() {
            push_entry(&mut entries, previous, entry);
            previous = entry.at;
        }
        Encoded {
            window: view.window,
            len: view.len(),
            oldest,
            entries,
        }
    }

    /// Rebuilds a log from its persisted form, checking every byte: the
    /// input may come from a corrupt or hostile RDB payload.
    pub fn decode(stored: &Encoded) -> Result<TimeLog, DecodeError> {
        let mut decoded = Builder::new(stored.window);
        let mut bytes = stored.entries.iter().copied();
        let mut previous = stored.oldest;
        while bytes.len() > 0 {
            let entry = read_entry(&mut bytes, previous)?;
            previous = entry.at;
            decoded.push(entry)?;
        }
        decoded.finish(stored.len)
    }

    /// Rebuilds a log saved by version 1, which stored one time per unit:
    /// units at the same millisecond become one entry. Version 1 kept no
    /// window, so the log's window becomes the span of its entries (plus
    /// 1 ms), which keeps them all; the next call raises it to its own.
    pub fn decode_units(oldest: Millis, units: u64, gaps: &[u8]) -> Result<TimeLog, DecodeError> {
        let mut bytes = gaps.iter().copied();
        let mut times = Vec::new();
        let mut at = oldest;
        if units > 0 {
            times.push(at);
        }
        while bytes.len() > 0 {
            let gap = read_varint(&mut bytes).ok_or(DecodeError::BadEntry)?;
            at = at.checked_add_unsigned(gap).ok_or(DecodeError::BadTime)?;
            times.push(at);
        }
        if times.len() as u64 != units {
            return Err(DecodeError::WrongLength);
        }
        let window = at.abs_diff(oldest).saturating_add(1).min(MAX_WINDOW);
        let mut decoded = Builder::new(window);
        let mut len = 0;
        for run in times.chunk_by(|a, b| a == b) {
            decoded.push(Entry {
                at: run[0],
                cost: run.len() as u64,
            })?;
            len += 1;
        }
        decoded.finish(len)
    }
}

/// Collects decoded entries, checking each, into the smallest form that
/// holds them.
pub(super) struct Builder {
    large: Large,
    oldest: Option<Entry>,
    newest: Option<Entry>,
}

impl Builder {
    fn new(window: u64) -> Builder {
        Builder {
            large: Large::new(window),
            oldest: None,
            newest: None,
        }
    }

    fn push(&mut self, entry: Entry) -> Result<(), DecodeError> {
        if !TIMES.contains(&entry.at) {
            return Err(DecodeError::BadTime);
        }
        if entry.cost == 0 || entry.cost > MAX_COST {
            return Err(DecodeError::BadEntry);
        }
        if let Some(newest) = self.newest {
            if entry.at < newest.at {
                return Err(DecodeError::BadTime);
            }
            let would_share = newest
                .cost
                .checked_add(entry.cost)
                .is_some_and(|c| c <= MAX_COST);
            if entry.at == newest.at && would_share {
                return Err(DecodeError::SharedMillisecond);
            }
        }
        self.oldest.get_or_insert(entry);
        self.newest = Some(entry);
        self.large.push_back(entry);
        Ok(())
    }

    fn finish(self, len: u64) -> Result<TimeLog, DecodeError> {
        if self.large.len != len {
            return Err(DecodeError::WrongLength);
        }
        let window = self.large.stream.window;
        if len > 0 && !(1..=MAX_WINDOW).contains(&window) {
            return Err(DecodeError::BadWindow);
        }
        if let (Some(oldest), Some(newest)) = (self.oldest, self.newest) {
            if oldest.at <= newest.at.saturating_sub_unsigned(window) {
                return Err(DecodeError::Expired);
            }
        }
        let repr = match Packed::of(&self.large.stream) {
            Some(packed) => packed.into_repr(),
            None => Repr::Large(Box::new(self.large)),
        };
        Ok(TimeLog(repr))
    }
}

/// Reads one entry whose gap counts from `previous`, checking everything.
fn read_entry(
    bytes: &mut impl Iterator<Item = u8>,
    previous: Millis,
) -> Result<Entry, DecodeError> {
    let head = read_varint(bytes).ok_or(DecodeError::BadEntry)?;
    let cost = if head & 1 == 1 {
        let cost = read_varint(bytes).ok_or(DecodeError::BadEntry)?;
        if cost & 1 == 0 || cost >> 1 == 0 {
            return Err(DecodeError::BadEntry);
        }
        cost >> 1
    } else {
        1
    };
    let at = previous
        .checked_add_unsigned(head >> 1)
        .filter(|&at| at >= 0)
        .ok_or(DecodeError::BadTime)?;
    Ok(Entry { at, cost })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::tests::entries;
    use proptest::prelude::*;

    #[test]
    fn version_1_units_become_entries() {
        // Units at 100, 100, 101 and 300: gaps 0, 1, 199 (two bytes).
        let log = TimeLog::decode_units(100, 4, &[0, 1, 0xc7, 0x01]).unwrap();
        assert_eq!(entries(&log), [(100, 2), (101, 1), (300, 1)]);
        assert_eq!(log.window(), 201);
        assert_eq!(
            TimeLog::decode_units(0, 3, &[1]),
            Err(DecodeError::WrongLength)
        );
        assert_eq!(
            TimeLog::decode_units(0, 2, &[0x80]),
            Err(DecodeError::BadEntry)
        );
    }

    #[test]
    fn decode_rejects_malformed_entries() {
        let stored = |window, len, oldest, entries: &[u8]| Encoded {
            window,
            len,
            oldest,
            entries: entries.to_vec(),
        };
        let decode = |s: Encoded| TimeLog::decode(&s);
        assert_eq!(
            decode(stored(10, 1, 5, &[0x80])),
            Err(DecodeError::BadEntry)
        );
        assert_eq!(decode(stored(10, 1, 5, &[1])), Err(DecodeError::BadEntry));
        assert_eq!(
            decode(stored(10, 1, 5, &[1, 2])),
            Err(DecodeError::BadEntry)
        );
        assert_eq!(
            decode(stored(10, 1, 5, &[1, 1])),
            Err(DecodeError::BadEntry)
        );
        assert_eq!(
            decode(stored(10, 2, 5, &[0])),
            Err(DecodeError::WrongLength)
        );
        assert_eq!(decode(stored(0, 1, 5, &[0])), Err(DecodeError::BadWindow));
        assert_eq!(decode(stored(10, 1, -1, &[0])), Err(DecodeError::BadTime));
        let past_i64 = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(
            decode(stored(10, 1, 5, &past_i64)),
            Err(DecodeError::BadTime)
        );
        assert_eq!(
            decode(stored(10, 1, 5, &[0, 3])),
            Err(DecodeError::BadEntry)
        );
    }

    /// What the module never writes is refused: issue 19, findings 2 and 3.
    #[test]
    fn decode_refuses_what_the_module_never_writes() {
        let stored = |window, entries: &[(Millis, u64)]| {
            let mut bytes = Vec::new();
            let oldest = entries.first().map_or(0, |e| e.0);
            let mut previous = oldest;
            for &(at, cost) in entries {
                push_entry(&mut bytes, previous, Entry { at, cost });
                previous = at;
            }
            Encoded {
                window,
                len: entries.len() as u64,
                oldest,
                entries: bytes,
            }
        };
        let decode = |window, e: &[(Millis, u64)]| TimeLog::decode(&stored(window, e));
        let last = *TIMES.end();
        assert_eq!(decode(10, &[(0, 1)]), Err(DecodeError::BadTime));
        assert_eq!(decode(10, &[(last + 1, 1)]), Err(DecodeError::BadTime));
        assert!(decode(10, &[(last - 1, 1), (last, 1)]).is_ok());
        assert_eq!(
            decode(10, &[(5, 1), (5, 2)]),
            Err(DecodeError::SharedMillisecond)
        );
        let full = MAX_COST - 1;
        let shared = decode(10, &[(5, full), (5, 2)]).expect("costs no entry can share");
        assert_eq!(entries(&shared), [(5, full), (5, 2)]);
        assert_eq!(decode(10, &[(5, 1), (15, 1)]), Err(DecodeError::Expired));
        assert!(decode(10, &[(6, 1), (15, 1)]).is_ok());
    }

    proptest! {
        #[test]
        fn decode_never_panics(window in 0u64..100, oldest in -2i64..1 << 50, len in 0u64..40, bytes in proptest::collection::vec(any::<u8>(), 0..60)) {
            if let Ok(log) = TimeLog::decode(&Encoded { window, len, oldest, entries: bytes }) {
                let view = log.view();
                prop_assert_eq!(view.entries().count() as u64, len);
                prop_assert_eq!(view.entries().rev().count() as u64, len);
            }
        }
    }
}
