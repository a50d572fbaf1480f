//! The compact storage of one key's sliding-window log.
//!
//! A log is a sequence of entries, oldest first, each a time (milliseconds)
//! and the cost recorded at it: one entry per recorded request, or per
//! group of requests that share a millisecond (or a `PRECISION` cell, see
//! [`TimeLog::record`]). With them the log keeps its *window*: the longest
//! window any call recorded on the key has used. Entries leave at the front
//! when they expire under that window, and at the back when refunded, so
//! the log is a deque that only ever changes at its two ends.
//!
//! It is kept in three layers, a file each: `codec` (an entry's bytes,
//! and a cursor that reads them from either end), `forms` (the three
//! ways a log is stored: two packed blocks and a heap deque) and
//! `persist` (the form saved to RDB and read back, checked). All of the
//! log's unsafe code is in `forms`, where a defragmenter moves its blocks.

mod codec;
mod forms;
mod persist;

pub use codec::Entries;
pub(crate) use forms::relocate_box;
pub use forms::Relocate;
pub use persist::{DecodeError, Encoded};

use codec::Cursor;
use forms::Repr;
use std::num::NonZeroU64;
use std::ops::RangeInclusive;

/// Milliseconds since the Unix epoch, as `RedisModule_Milliseconds` gives them.
pub type Millis = i64;

/// Requests recorded together: `cost` units at time `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub at: Millis,
    /// At least 1, at most [`MAX_COST`].
    pub cost: u64,
}

/// The largest cost one entry holds (and so the largest `max` and COST a
/// call may give): what a reply's signed 64-bit integer can carry.
pub const MAX_COST: u64 = i64::MAX as u64;

/// The longest window a limit may have: 365 days.
pub const MAX_WINDOW: u64 = 365 * 24 * 60 * 60 * 1000;

/// The times an entry may have, wherever it comes from (a CHECK, RECORD's
/// arguments, an RDB or DUMP payload): positive, and far enough from
/// `i64::MAX` that adding a window cannot overflow. Whatever one server
/// accepts, every replica and every reload accepts too.
pub const TIMES: RangeInclusive<Millis> = 1..=i64::MAX / 2;

/// What an allowed request changes: `cost` units at `at`, kept under a
/// window of `window` ms, sharing an entry within `precision` ms cells.
/// Built from a parsed request or RECORD's checked arguments: `at` within
/// [`TIMES`], `window` and `precision` at most [`MAX_WINDOW`], `cost` at
/// most [`MAX_COST`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub at: Millis,
    pub window: NonZeroU64,
    pub cost: NonZeroU64,
    pub precision: NonZeroU64,
}

impl Record {
    fn is_within_bounds(&self) -> bool {
        TIMES.contains(&self.at)
            && self.window.get() <= MAX_WINDOW
            && self.cost.get() <= MAX_COST
            && self.precision.get() <= MAX_WINDOW
    }
}

#[derive(Clone, Debug, Default)]
pub struct TimeLog(Repr);

/// Equal entries and windows are equal logs, however they are kept.
impl PartialEq for TimeLog {
    fn eq(&self, other: &Self) -> bool {
        let (mine, theirs) = (self.view(), other.view());
        mine.window == theirs.window && mine.entries().eq(theirs.entries())
    }
}

impl Eq for TimeLog {}

/// A log opened for reading: its window, newest entry and cost sum at
/// hand, and its entries walkable from either end without decoding the
/// rest.
#[derive(Clone, Copy)]
pub struct View<'a> {
    /// The longest window recorded on this log (0 when it never held any).
    pub window: u64,
    /// The cost of every entry held (u128: entries recorded under
    /// different limits can add up past 64 bits).
    pub total: u128,
    /// Entries held, which a heap log keeps count of.
    len: Option<u64>,
    cursor: Cursor<'a>,
}

impl<'a> View<'a> {
    fn empty() -> View<'a> {
        View {
            window: 0,
            total: 0,
            len: Some(0),
            cursor: Cursor::over(&[], &[], 0, 0),
        }
    }

    /// All entries, oldest first; `.rev()` walks them newest first.
    pub fn entries(&self) -> Entries<'a> {
        Entries(self.cursor)
    }

    /// Entries held.
    pub fn len(&self) -> u64 {
        self.len.unwrap_or_else(|| self.entries().count() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.cursor.front >= self.cursor.back
    }

    pub fn newest(&self) -> Option<Entry> {
        self.entries().next_back()
    }
}

impl TimeLog {
    pub fn len(&self) -> u64 {
        self.view().len()
    }

    pub fn window(&self) -> u64 {
        self.view().window
    }

    pub fn newest(&self) -> Option<Entry> {
        self.view().newest()
    }

    pub fn total(&self) -> u128 {
        self.view().total
    }

    /// Records `record.cost` units at `record.at` under a limit of
    /// `record.window` ms:
    ///
    /// 1. the log's window becomes `window` if that is longer;
    /// 2. entries expired under the log's window (at or before
    ///    `at - window`) are dropped, so a call with a short window never
    ///    drops what a longer limit on the same key still counts;
    /// 3. if the newest entry lies in the same cell `floor(t / precision)`
    ///    as `at`, the units join it and its time moves to `at` (forward by
    ///    less than `precision`, so they are counted for at least their
    ///    window, and at most `precision - 1` ms longer); else they become
    ///    a new entry. With precision 1 only the same millisecond shares.
    ///
    /// An `at` before the newest entry is taken as the newest entry's time,
    /// so the log stays in order. Returns when the key expires: its newest
    /// entry's time plus the log's window.
    pub fn record(&mut self, record: &Record) -> Millis {
        debug_assert!(record.is_within_bounds(), "{record:?}");
        let cost = record.cost.get();
        self.edit(|entries| {
            let newest = entries.back();
            let at = newest.map_or(record.at, |newest| record.at.max(newest.at));
            let window = record.window.get().max(entries.window());
            entries.set_window(window);
            let horizon = at.saturating_sub_unsigned(window);
            while entries.front().is_some_and(|oldest| oldest.at <= horizon) {
                entries.pop_front();
            }
            // Pruning leaves the newest entry unless it takes every entry.
            match newest.filter(|_| !entries.is_empty()) {
                Some(newest) if joins(newest, at, cost, record.precision) => {
                    entries.pop_back();
                    entries.push_back(Entry {
                        at,
                        cost: newest.cost + cost,
                    });
                }
                _ => entries.push_back(Entry { at, cost }),
            }
            debug_assert!(entries.front().is_some_and(|oldest| oldest.at > horizon));
            at.saturating_add_unsigned(window)
        })
    }

    /// How many entries the log would hold after `record`, if it needs a
    /// new entry; `None` if its units would join the newest entry.
    pub fn len_with_new_entry(&self, record: &Record) -> Option<u64> {
        let view = self.view();
        let newest = view.newest();
        let at = newest.map_or(record.at, |newest| record.at.max(newest.at));
        let horizon = at.saturating_sub_unsigned(record.window.get().max(view.window));
        let expired = view.entries().take_while(|e| e.at <= horizon).count() as u64;
        let kept = view.len() - expired;
        let joined =
            kept > 0 && newest.is_some_and(|n| joins(n, at, record.cost.get(), record.precision));
        (!joined).then_some(kept + 1)
    }

    /// Makes the log keep entries for `window` ms if that is longer than
    /// its window, dropping nothing (a denied CHECK that names a longer
    /// window than any before). Returns when the key expires: its newest
    /// entry's time plus the log's window.
    pub fn widen(&mut self, window: NonZeroU64) -> Millis {
        debug_assert!(window.get() <= MAX_WINDOW);
        self.edit(|entries| {
            let window = window.get().max(entries.window());
            entries.set_window(window);
            entries
                .back()
                .map_or(0, |newest| newest.at.saturating_add_unsigned(window))
        })
    }

    /// UNDO: takes back up to `units` of the newest recorded cost, taking
    /// part of an entry's cost if `units` ends inside it; returns how many
    /// units went.
    pub fn refund(&mut self, units: u64) -> u64 {
        self.edit(|entries| {
            let mut removed = 0;
            while removed < units {
                let Some(newest) = entries.pop_back() else {
                    break;
                };
                let taken = newest.cost.min(units - removed);
                if taken < newest.cost {
                    push_rest(
                        entries,
                        Entry {
                            at: newest.at,
                            cost: newest.cost - taken,
                        },
                    );
                }
                removed += taken;
            }
            removed
        })
    }
}

/// Puts back what a refund left of the newest entry. Two entries share a
/// millisecond only when their costs cannot share one entry (see
/// `joins`); once a refund lets them, they become one, as recording them
/// again would make them (the AOF rewrite does), and as the loader
/// requires.
fn push_rest(entries: &mut dyn EntryDeque, rest: Entry) {
    let shares = |previous: &Entry| {
        previous.at == rest.at
            && previous
                .cost
                .checked_add(rest.cost)
                .is_some_and(|c| c <= MAX_COST)
    };
    match entries.back().filter(shares) {
        Some(previous) => {
            entries.pop_back();
            entries.push_back(Entry {
                at: rest.at,
                cost: previous.cost + rest.cost,
            });
        }
        None => entries.push_back(rest),
    }
}

/// Whether units recorded at `at` join the newest entry (see `record`).
fn joins(newest: Entry, at: Millis, cost: u64, precision: NonZeroU64) -> bool {
    // A precision is at most MAX_WINDOW (a `Record`'s bound), so it is a
    // positive i64.
    let cell = |t: Millis| t.div_euclid(precision.get() as i64);
    cell(newest.at) == cell(at) && newest.cost.checked_add(cost).is_some_and(|c| c <= MAX_COST)
}

/// The ends of a log, in either form: all that recording and refunding
/// need, written once over both.
trait EntryDeque {
    fn is_empty(&self) -> bool;
    fn window(&self) -> u64;
    fn set_window(&mut self, window: u64);
    fn front(&self) -> Option<Entry>;
    fn back(&self) -> Option<Entry>;
    fn pop_front(&mut self) -> Option<Entry>;
    fn pop_back(&mut self) -> Option<Entry>;
    fn push_back(&mut self, entry: Entry);
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::reference::Model;
    use proptest::prelude::*;

    pub(super) fn nz(n: u64) -> NonZeroU64 {
        NonZeroU64::new(n).expect("test values are positive")
    }

    pub(crate) fn record(
        log: &mut TimeLog,
        at: Millis,
        window: u64,
        cost: u64,
        precision: u64,
    ) -> Millis {
        log.record(&Record {
            at,
            window: nz(window),
            cost: nz(cost),
            precision: nz(precision),
        })
    }

    pub(super) fn entries(log: &TimeLog) -> Vec<(Millis, u64)> {
        log.view().entries().map(|e| (e.at, e.cost)).collect()
    }

    #[test]
    fn precision_merges_a_cell_into_its_newest_entry() {
        let mut log = TimeLog::default();
        for at in [1_000, 1_400, 1_999, 2_000, 2_500] {
            record(&mut log, at, 60_000, 1, 1_000);
        }
        assert_eq!(entries(&log), [(1_999, 3), (2_500, 2)]);
    }

    #[test]
    fn the_window_only_grows_and_prunes_only_what_it_expired() {
        let mut log = TimeLog::default();
        record(&mut log, 1, 10_000, 1, 1);
        record(&mut log, 5_000, 1_000, 1, 1);
        assert_eq!(log.window(), 10_000);
        assert_eq!(entries(&log), [(1, 1), (5_000, 1)]);
        record(&mut log, 10_001, 1_000, 1, 1);
        assert_eq!(entries(&log), [(5_000, 1), (10_001, 1)]);
    }

    /// Entries split at one millisecond because their costs overflowed
    /// one entry become one again when a refund lets them.
    #[test]
    fn a_refund_rejoins_entries_split_at_one_millisecond() {
        let mut log = TimeLog::default();
        record(&mut log, 5, 100, MAX_COST - 1, 1);
        record(&mut log, 5, 100, 2, 1);
        assert_eq!(entries(&log), [(5, MAX_COST - 1), (5, 2)]);
        assert_eq!(log.refund(1), 1);
        assert_eq!(entries(&log), [(5, MAX_COST)]);
        assert_eq!(TimeLog::decode(&log.encode()), Ok(log));
    }

    #[test]
    fn refund_takes_units_from_the_newest_entries() {
        let mut log = TimeLog::default();
        record(&mut log, 1, 100, 5, 1);
        record(&mut log, 2, 100, 3, 1);
        assert_eq!(log.refund(4), 4);
        assert_eq!(entries(&log), [(1, 4)]);
        assert_eq!(log.refund(10), 4);
        assert!(log.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Record {
            tick: i64,
            window: u64,
            cost: u64,
            precision: u64,
        },
        Refund(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Costs near MAX_COST split one millisecond into entries that a
        // refund can join again.
        let cost = prop_oneof![
            4 => Just(1u64),
            2 => 1u64..100,
            1 => Just(MAX_COST / 3),
            1 => Just(MAX_COST - 1),
        ];
        prop_oneof![
            6 => (prop_oneof![1 => Just(0i64), 4 => 0i64..300], prop_oneof![Just(0i64), Just(1 << 30)], 1u64..2_000, cost, prop_oneof![Just(1u64), 1u64..50])
                .prop_map(|(tick, jump, window, cost, precision)| Op::Record { tick: tick + jump, window, cost, precision }),
            1 => prop_oneof![Just(1u64), 1u64..300].prop_map(Op::Refund),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]
        #[test]
        fn behaves_like_a_list_of_entries(ops in proptest::collection::vec(op(), 0..200)) {
            let mut log = TimeLog::default();
            let mut reference = Model::default();
            let mut now: Millis = 1_000;
            for op in ops {
                match op {
                    Op::Record { tick, window: w, cost, precision } => {
                        now += tick;
                        let new_entry_len = log.len_with_new_entry(&Record {
                            at: now,
                            window: nz(w),
                            cost: nz(cost),
                            precision: nz(precision),
                        });
                        let expires = record(&mut log, now, w, cost, precision);
                        prop_assert_eq!(expires, reference.record(now, w, cost, precision));
                        // A new entry holds exactly `cost`; a joined one more.
                        let model = reference.entries();
                        let fresh = model.last().is_some_and(|newest| newest.cost == cost);
                        prop_assert_eq!(new_entry_len, fresh.then_some(model.len() as u64));
                    }
                    Op::Refund(units) => {
                        prop_assert_eq!(log.refund(units), reference.refund(units));
                    }
                }
                let (model, window) = (reference.entries(), reference.window());
                let view = log.view();
                prop_assert_eq!(view.entries().collect::<Vec<_>>(), model.to_vec());
                prop_assert!(view.entries().rev().eq(model.iter().rev().copied()));
                prop_assert_eq!(log.len(), model.len() as u64);
                prop_assert_eq!(log.total(), model.iter().map(|e| u128::from(e.cost)).sum::<u128>());
                prop_assert_eq!(log.newest(), model.last().copied());
                if !model.is_empty() {
                    prop_assert_eq!(log.window(), window);
                    let decoded = TimeLog::decode(&log.encode());
                    prop_assert_eq!(decoded.as_ref(), Ok(&log));
                    prop_assert_eq!(decoded.map(|d| d.encode().entries), Ok(log.encode().entries));
                }
            }
        }

    }
}
