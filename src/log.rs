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
//!
//! Most keys hold a handful of entries (a user, an IP), and Redis already
//! spends about 130 bytes on a key of its own, so a small log is packed
//! whole (window, first time, span to the newest time, cost sum, then the
//! entries, all varints) into the 16-byte block Redis points at: 14 bytes
//! hold one request, or a few close together. Up to 47 bytes (a dozen or
//! so requests seconds apart) go in one 48-byte block beside it. A log
//! that outgrows both moves to the heap, with its header fields decoded and
//! its entries in a `VecDeque`. Every form is read and changed the same
//! way, at its two ends only: a packed log is copied to the stack to be
//! changed and packed again, which at that size costs a few dozen bytes
//! copied.

use std::alloc::Layout;
use std::collections::VecDeque;
use std::mem::ManuallyDrop;
use std::ptr::{self, NonNull};

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

const CONTINUATION: u8 = 0x80;
const MAX_VARINT_LEN: usize = 10;
const SMALL_BYTES: usize = 14;
const MEDIUM_BYTES: usize = 47;
/// A heap log this short is packed again if it fits (well below what fills
/// a packed block, so a log at the boundary does not bounce).
const DEMOTE_AT: u64 = 8;
/// The most entries a packed log can hold: one byte each after a header
/// of at least four.
const PACKED_ENTRIES: u64 = (MEDIUM_BYTES - 4) as u64;
/// Below this many bytes of capacity a heap deque never bothers to shrink.
const MIN_SHRINK_CAPACITY: usize = 64;

#[derive(Clone, Debug, Default)]
pub struct TimeLog(Repr);

#[derive(Clone, Debug)]
enum Repr {
    Small { len: u8, bytes: [u8; SMALL_BYTES] },
    Medium(Box<MediumBlock>),
    Large(Box<Large>),
}

#[derive(Clone, Debug)]
struct MediumBlock {
    len: u8,
    bytes: [u8; MEDIUM_BYTES],
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Small {
            len: 0,
            bytes: [0; SMALL_BYTES],
        }
    }
}

// Redis stores a pointer to the log; the block behind it is what a small
// key costs beyond Redis's own bookkeeping.
const _: () = assert!(std::mem::size_of::<TimeLog>() == 16);

/// Equal entries and windows are equal logs, however they are kept.
impl PartialEq for TimeLog {
    fn eq(&self, other: &Self) -> bool {
        let (mine, theirs) = (self.view(), other.view());
        mine.window == theirs.window && mine.entries().eq(theirs.entries())
    }
}

impl Eq for TimeLog {}

/// Why bytes read back from storage do not form a log.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A varint runs past the end of the buffer or past 64 bits, or a
    /// cost is missing or zero.
    BadEntry,
    /// The buffer holds a different number of entries than the header says.
    WrongLength,
    /// A time is negative or past `i64::MAX`.
    BadTime,
    /// The window of a log that holds entries is outside `1..=MAX_WINDOW`.
    BadWindow,
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
    pub fn view(&self) -> View<'_> {
        match &self.0 {
            Repr::Small { len, bytes } => packed_view(&bytes[..usize::from(*len)]),
            Repr::Medium(block) => packed_view(&block.bytes[..usize::from(block.len)]),
            Repr::Large(large) => large.stream.view(Some(large.len)),
        }
    }

    pub fn len(&self) -> u64 {
        self.view().len()
    }

    pub fn is_empty(&self) -> bool {
        match &self.0 {
            Repr::Small { len, .. } => *len == 0,
            Repr::Medium(block) => block.len == 0,
            Repr::Large(large) => large.len == 0,
        }
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

    /// At least as many entries as the log holds, without counting a
    /// packed log's.
    pub fn len_bound(&self) -> u64 {
        match &self.0 {
            Repr::Large(large) => large.len,
            _ => PACKED_ENTRIES,
        }
    }

    /// Records `cost` units at `at` under a limit of `window` ms:
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
    pub fn record(&mut self, at: Millis, window: u64, cost: u64, precision: u64) -> Millis {
        self.edit(|entries| {
            let newest = entries.back();
            let at = newest.map_or(at, |newest| at.max(newest.at));
            let window = window.max(entries.window());
            entries.set_window(window);
            let horizon = at.saturating_sub_unsigned(window);
            while entries.front().is_some_and(|oldest| oldest.at <= horizon) {
                entries.pop_front();
            }
            // Pruning leaves the newest entry unless it takes every entry.
            match newest.filter(|_| !entries.is_empty()) {
                Some(newest) if joins(newest, at, cost, precision) => {
                    entries.pop_back();
                    entries.push_back(Entry {
                        at,
                        cost: newest.cost + cost,
                    });
                }
                _ => entries.push_back(Entry { at, cost }),
            }
            at.saturating_add_unsigned(window)
        })
    }

    /// How many entries the log would hold after `record` with the same
    /// arguments, without recording.
    pub fn len_after_record(&self, at: Millis, window: u64, cost: u64, precision: u64) -> u64 {
        let view = self.view();
        let horizon = at.saturating_sub_unsigned(window.max(view.window));
        let expired = view.entries().take_while(|e| e.at <= horizon).count() as u64;
        let kept = view.len() - expired;
        let joined = kept > 0 && view.newest().is_some_and(|n| joins(n, at, cost, precision));
        kept + u64::from(!joined)
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
                    entries.push_back(Entry {
                        at: newest.at,
                        cost: newest.cost - taken,
                    });
                }
                removed += taken;
            }
            removed
        })
    }

    /// Heap bytes held beyond the 16-byte block, for `MEMORY USAGE`.
    pub fn heap_size(&self) -> usize {
        match &self.0 {
            Repr::Small { .. } => 0,
            Repr::Medium(_) => std::mem::size_of::<MediumBlock>(),
            Repr::Large(large) => std::mem::size_of::<Large>() + large.stream.bytes.capacity(),
        }
    }

    /// Offers each heap allocation of the log to `relocate`, which the
    /// server's active defragmentation uses to move it off a sparse page.
    /// Returns how many moved. A heap deque that wraps around its buffer is
    /// made contiguous first (a copy within the buffer), as the buffer can
    /// only be handed over whole.
    ///
    /// # Safety
    ///
    /// `relocate` is given the start of an allocation the global allocator
    /// made with that layout. It must return `None` and leave it alone, or
    /// return a new allocation of the same layout holding the same bytes,
    /// having freed the old one.
    pub unsafe fn relocate(&mut self, relocate: &mut Relocate) -> usize {
        match &mut self.0 {
            Repr::Small { .. } => 0,
            Repr::Medium(block) => unsafe { usize::from(relocate_box(block, relocate)) },
            Repr::Large(large) => unsafe {
                let bytes = relocate_bytes(&mut large.stream.bytes, relocate);
                usize::from(bytes) + usize::from(relocate_box(large, relocate))
            },
        }
    }

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

    /// Runs `change` on the entries, in whichever form keeps them, then
    /// stores the result in the smallest form that holds it.
    fn edit<T>(&mut self, change: impl FnOnce(&mut dyn EntryDeque) -> T) -> T {
        if let Repr::Large(large) = &mut self.0 {
            let result = change(large.as_mut());
            if large.len <= DEMOTE_AT {
                if let Some(packed) = Packed::of(&large.stream) {
                    self.0 = packed.into_repr();
                }
            }
            return result;
        }
        let mut stream = self.packed_stream();
        let result = change(&mut stream);
        match Packed::of(&stream) {
            Some(packed) => packed.store_in(&mut self.0),
            None => self.0 = Repr::Large(Box::new(Large::from_stream(&stream))),
        }
        result
    }

    /// A packed log, copied to the stack to be changed.
    fn packed_stream(&self) -> Stream<StackBytes> {
        let view = self.view();
        let mut bytes = StackBytes::default();
        bytes.push_slice(view.cursor.first);
        bytes.push_slice(view.cursor.second);
        Stream {
            window: view.window,
            base: view.cursor.front_time,
            newest: view.cursor.back_time,
            total: view.total,
            bytes,
        }
    }
}

/// A packed log: window, the time the first gap counts from, the span to
/// the newest entry's time and the cost sum, as varints, then the entries.
fn packed_view(bytes: &[u8]) -> View<'_> {
    let mut header = bytes.iter().copied();
    let (Some(window), Some(base), Some(span), Some(total)) = (
        read_varint(&mut header),
        read_varint(&mut header),
        read_varint(&mut header),
        read_varint(&mut header),
    ) else {
        return View::empty();
    };
    let base = base as Millis;
    let entries = &bytes[bytes.len() - header.len()..];
    let cursor = Cursor::over(entries, &[], base, base.saturating_add_unsigned(span));
    View {
        window,
        total: u128::from(total),
        len: None,
        cursor,
    }
}

/// A stream packed into bytes, if a packed block holds them.
struct Packed {
    bytes: StackBytes,
}

impl Packed {
    fn of<B: ByteDeque>(stream: &Stream<B>) -> Option<Packed> {
        let mut bytes = StackBytes::default();
        if stream.bytes.len() > 0 {
            push_varint(&mut bytes, stream.window);
            push_varint(&mut bytes, stream.base as u64);
            push_varint(&mut bytes, stream.newest.abs_diff(stream.base));
            push_varint(&mut bytes, u64::try_from(stream.total).ok()?);
            let (first, second) = stream.bytes.slices();
            bytes.push_slice(first);
            bytes.push_slice(second);
        }
        (bytes.written()?.len() <= MEDIUM_BYTES).then_some(Packed { bytes })
    }

    fn into_repr(self) -> Repr {
        let mut repr = Repr::default();
        self.store_in(&mut repr);
        repr
    }

    /// Stores the bytes in the 16-byte block, or in a 48-byte one (reusing
    /// one `repr` already holds).
    fn store_in(&self, repr: &mut Repr) {
        let Some(bytes) = self.bytes.written() else {
            return;
        };
        if bytes.len() <= SMALL_BYTES {
            let mut small = [0; SMALL_BYTES];
            small[..bytes.len()].copy_from_slice(bytes);
            *repr = Repr::Small {
                len: bytes.len() as u8,
                bytes: small,
            };
            return;
        }
        if !matches!(repr, Repr::Medium(_)) {
            *repr = Repr::Medium(Box::new(MediumBlock {
                len: 0,
                bytes: [0; MEDIUM_BYTES],
            }));
        }
        if let Repr::Medium(block) = repr {
            block.len = bytes.len() as u8;
            block.bytes[..bytes.len()].copy_from_slice(bytes);
        }
    }
}

/// Whether units recorded at `at` join the newest entry (see `record`).
fn joins(newest: Entry, at: Millis, cost: u64, precision: u64) -> bool {
    let cell = |t: Millis| t.div_euclid(precision.clamp(1, MAX_WINDOW) as i64);
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

/// Where a stream's entry bytes are kept: a heap deque, or a stack buffer
/// while a packed log is being changed.
trait ByteDeque: Extend<u8> {
    fn slices(&self) -> (&[u8], &[u8]);
    fn len(&self) -> usize;
    fn drain_front(&mut self, count: usize);
    fn truncate(&mut self, keep: usize);
}

/// Entries as bytes, with the header fields that make sense of them.
#[derive(Clone, Debug)]
struct Stream<B> {
    window: u64,
    /// The time the first entry's gap counts from.
    base: Millis,
    newest: Millis,
    total: u128,
    bytes: B,
}

impl<B: ByteDeque> Stream<B> {
    fn cursor(&self) -> Cursor<'_> {
        let (first, second) = self.bytes.slices();
        Cursor::over(first, second, self.base, self.newest)
    }

    fn view(&self, len: Option<u64>) -> View<'_> {
        let cursor = self.cursor();
        View {
            window: self.window,
            total: self.total,
            len,
            cursor,
        }
    }
}

impl<B: ByteDeque> EntryDeque for Stream<B> {
    fn is_empty(&self) -> bool {
        self.bytes.len() == 0
    }

    fn window(&self) -> u64 {
        self.window
    }

    fn set_window(&mut self, window: u64) {
        self.window = window;
    }

    fn front(&self) -> Option<Entry> {
        self.cursor().take_front()
    }

    fn back(&self) -> Option<Entry> {
        self.cursor().take_back()
    }

    fn pop_front(&mut self) -> Option<Entry> {
        let mut cursor = self.cursor();
        let oldest = cursor.take_front()?;
        let used = cursor.front;
        self.bytes.drain_front(used);
        self.base = oldest.at;
        self.total -= u128::from(oldest.cost);
        Some(oldest)
    }

    fn pop_back(&mut self) -> Option<Entry> {
        let mut cursor = self.cursor();
        let newest = cursor.take_back()?;
        let (keep, previous) = (cursor.back, cursor.back_time);
        self.bytes.truncate(keep);
        self.newest = previous;
        self.total -= u128::from(newest.cost);
        Some(newest)
    }

    fn push_back(&mut self, entry: Entry) {
        if self.bytes.len() == 0 {
            self.base = entry.at;
            self.newest = entry.at;
        }
        push_entry(&mut self.bytes, self.newest, entry);
        self.newest = entry.at;
        self.total += u128::from(entry.cost);
    }
}

/// Where a log is packed or changed on the stack: no allocation on the
/// hot path. Room for a full packed block and one more entry; more than
/// that is never written (`written` would say `None`).
#[derive(Clone, Debug)]
struct StackBytes {
    len: usize,
    bytes: [u8; 2 * MEDIUM_BYTES],
}

impl Default for StackBytes {
    fn default() -> Self {
        StackBytes {
            len: 0,
            bytes: [0; 2 * MEDIUM_BYTES],
        }
    }
}

impl Extend<u8> for StackBytes {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, bytes: I) {
        for byte in bytes {
            if let Some(slot) = self.bytes.get_mut(self.len) {
                *slot = byte;
            }
            self.len += 1;
        }
    }
}

impl StackBytes {
    fn written(&self) -> Option<&[u8]> {
        self.bytes.get(..self.len)
    }

    fn push_slice(&mut self, more: &[u8]) {
        if let Some(room) = self.bytes.get_mut(self.len..self.len + more.len()) {
            room.copy_from_slice(more);
        }
        self.len += more.len();
    }
}

impl ByteDeque for StackBytes {
    fn slices(&self) -> (&[u8], &[u8]) {
        (self.written().unwrap_or(&[]), &[])
    }

    fn len(&self) -> usize {
        self.len
    }

    fn drain_front(&mut self, count: usize) {
        let count = count.min(self.len);
        self.bytes.copy_within(count..self.len, 0);
        self.len -= count;
    }

    fn truncate(&mut self, keep: usize) {
        self.len = self.len.min(keep);
    }
}

impl ByteDeque for VecDeque<u8> {
    fn slices(&self) -> (&[u8], &[u8]) {
        self.as_slices()
    }

    fn len(&self) -> usize {
        VecDeque::len(self)
    }

    fn drain_front(&mut self, count: usize) {
        self.drain(..count.min(VecDeque::len(self)));
    }

    fn truncate(&mut self, keep: usize) {
        VecDeque::truncate(self, keep);
    }
}

/// Moves an allocation elsewhere, or leaves it (`None`); see
/// [`TimeLog::relocate`].
pub type Relocate<'a> = dyn FnMut(NonNull<u8>, Layout) -> Option<NonNull<u8>> + 'a;

/// SAFETY: as for [`TimeLog::relocate`].
unsafe fn relocate_box<T>(boxed: &mut Box<T>, relocate: &mut Relocate) -> bool {
    let old = NonNull::from(&mut **boxed).cast::<u8>();
    let Some(new) = relocate(old, Layout::new::<T>()) else {
        return false;
    };
    // The old allocation is already freed: overwrite the box, never drop it.
    unsafe { ptr::write(boxed, Box::from_raw(new.as_ptr().cast::<T>())) };
    true
}

/// SAFETY: as for [`TimeLog::relocate`].
unsafe fn relocate_bytes(deque: &mut VecDeque<u8>, relocate: &mut Relocate) -> bool {
    if deque.capacity() == 0 {
        return false;
    }
    // Both conversions keep the buffer: no allocation, and O(1) back.
    let mut bytes = ManuallyDrop::new(Vec::from(std::mem::take(deque)));
    let (old, len, capacity) = (bytes.as_mut_ptr(), bytes.len(), bytes.capacity());
    let layout = Layout::array::<u8>(capacity).expect("the layout of a live buffer");
    let moved = NonNull::new(old).and_then(|old| relocate(old, layout));
    let buffer = match moved {
        Some(new) => unsafe { Vec::from_raw_parts(new.as_ptr(), len, capacity) },
        None => ManuallyDrop::into_inner(bytes),
    };
    *deque = VecDeque::from(buffer);
    moved.is_some()
}

/// A log that outgrew the packed blocks.
#[derive(Clone, Debug)]
struct Large {
    stream: Stream<VecDeque<u8>>,
    len: u64,
}

impl Large {
    fn new(window: u64) -> Large {
        Large {
            stream: Stream {
                window,
                base: 0,
                newest: 0,
                total: 0,
                bytes: VecDeque::new(),
            },
            len: 0,
        }
    }

    fn from_stream<B: ByteDeque>(stream: &Stream<B>) -> Large {
        let (first, second) = stream.bytes.slices();
        let mut bytes = VecDeque::with_capacity(first.len() + second.len() + 2 * MAX_VARINT_LEN);
        bytes.extend(first.iter().chain(second).copied());
        let large = Large {
            stream: Stream {
                window: stream.window,
                base: stream.base,
                newest: stream.newest,
                total: stream.total,
                bytes,
            },
            len: 0,
        };
        let len = Entries(large.stream.cursor()).count() as u64;
        Large { len, ..large }
    }

    /// After entries leave, gives memory back once three quarters of the
    /// buffer are unused, which keeps the work amortised O(1) per byte.
    fn shrink_if_sparse(&mut self) {
        let bytes = &mut self.stream.bytes;
        if bytes.capacity() > MIN_SHRINK_CAPACITY && bytes.len() < bytes.capacity() / 4 {
            bytes.shrink_to(bytes.len() * 2);
        }
    }
}

impl EntryDeque for Large {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn window(&self) -> u64 {
        self.stream.window
    }

    fn set_window(&mut self, window: u64) {
        self.stream.window = window;
    }

    fn front(&self) -> Option<Entry> {
        self.stream.front()
    }

    fn back(&self) -> Option<Entry> {
        self.stream.back()
    }

    fn pop_front(&mut self) -> Option<Entry> {
        let oldest = self.stream.pop_front()?;
        self.len -= 1;
        self.shrink_if_sparse();
        Some(oldest)
    }

    fn pop_back(&mut self) -> Option<Entry> {
        let newest = self.stream.pop_back()?;
        self.len -= 1;
        self.shrink_if_sparse();
        Some(newest)
    }

    fn push_back(&mut self, entry: Entry) {
        // Grow by an eighth rather than double, so a big log carries at
        // most an eighth of spare room: still amortised O(1) per byte.
        let bytes = &mut self.stream.bytes;
        let room_for_one = 2 * MAX_VARINT_LEN;
        if bytes.len() + room_for_one > bytes.capacity() {
            let eighth = bytes.len() / 8;
            bytes.reserve_exact(eighth.max(room_for_one));
        }
        self.stream.push_back(entry);
        self.len += 1;
    }
}

/// Entries of a log, oldest first or (reversed) newest first.
pub struct Entries<'a>(Cursor<'a>);

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
struct Cursor<'a> {
    first: &'a [u8],
    second: &'a [u8],
    /// Byte positions: entries lie in `front..back`.
    front: usize,
    back: usize,
    /// The time the next front entry's gap counts from.
    front_time: Millis,
    /// The time of the next back entry.
    back_time: Millis,
}

#[derive(Clone, Copy)]
struct Varint {
    start: usize,
    end: usize,
    value: u64,
}

impl<'a> Cursor<'a> {
    fn over(first: &'a [u8], second: &'a [u8], base: Millis, newest: Millis) -> Cursor<'a> {
        Cursor {
            first,
            second,
            front: 0,
            back: first.len() + second.len(),
            front_time: base,
            back_time: newest,
        }
    }

    fn byte(&self, at: usize) -> u8 {
        match at.checked_sub(self.first.len()) {
            None => self.first[at],
            Some(at) => self.second.get(at).copied().unwrap_or(0),
        }
    }

    /// The varint that starts at byte `start`.
    fn varint_at(&self, start: usize) -> Varint {
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
    fn varint_before(&self, end: usize) -> Varint {
        let start = (self.front..end.saturating_sub(1))
            .rev()
            .find(|&i| self.byte(i) & CONTINUATION == 0)
            .map_or(self.front, |i| i + 1);
        self.varint_at(start)
    }

    fn take_front(&mut self) -> Option<Entry> {
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

    fn take_back(&mut self) -> Option<Entry> {
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

/// Collects decoded entries, checking each, into the smallest form that
/// holds them.
struct Builder {
    large: Large,
}

impl Builder {
    fn new(window: u64) -> Builder {
        Builder {
            large: Large::new(window),
        }
    }

    fn push(&mut self, entry: Entry) -> Result<(), DecodeError> {
        if entry.at < 0 {
            return Err(DecodeError::BadTime);
        }
        if entry.cost == 0 || entry.cost > MAX_COST {
            return Err(DecodeError::BadEntry);
        }
        self.large.push_back(entry);
        Ok(())
    }

    fn finish(self, len: u64) -> Result<TimeLog, DecodeError> {
        if self.large.len != len {
            return Err(DecodeError::WrongLength);
        }
        if len > 0 && !(1..=MAX_WINDOW).contains(&self.large.stream.window) {
            return Err(DecodeError::BadWindow);
        }
        let repr = match Packed::of(&self.large.stream) {
            Some(packed) => packed.into_repr(),
            None => Repr::Large(Box::new(self.large)),
        };
        Ok(TimeLog(repr))
    }
}

/// Appends `entry`, whose gap counts from `previous` (not after it).
fn push_entry(out: &mut impl Extend<u8>, previous: Millis, entry: Entry) {
    let gap = entry.at.abs_diff(previous);
    let has_cost = entry.cost != 1;
    push_varint(out, gap << 1 | u64::from(has_cost));
    if has_cost {
        push_varint(out, entry.cost << 1 | 1);
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

fn push_varint(out: &mut impl Extend<u8>, mut value: u64) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entries(log: &TimeLog) -> Vec<(Millis, u64)> {
        log.view().entries().map(|e| (e.at, e.cost)).collect()
    }

    #[test]
    fn a_small_log_fits_its_block_and_a_busy_one_moves_out() {
        let mut log = TimeLog::default();
        let t = 1_700_000_000_000;
        log.record(t, 3_600_000, 10, 1);
        assert!(matches!(log.0, Repr::Small { .. }));
        assert_eq!(log.heap_size(), 0);
        assert_eq!(entries(&log), [(t, 10)]);
        for i in 1..100 {
            log.record(t + i, 3_600_000, 1, 1);
        }
        assert!(matches!(log.0, Repr::Large(_)));
        assert_eq!(log.len(), 100);
        assert_eq!(log.total(), 109);
        assert_eq!(
            log.newest(),
            Some(Entry {
                at: t + 99,
                cost: 1
            })
        );
    }

    /// What the server's defragmenter does to a moved allocation: a fresh
    /// copy, the old one freed.
    fn copy_elsewhere(old: NonNull<u8>, layout: Layout) -> Option<NonNull<u8>> {
        unsafe {
            let new = NonNull::new(std::alloc::alloc(layout))?;
            ptr::copy_nonoverlapping(old.as_ptr(), new.as_ptr(), layout.size());
            std::alloc::dealloc(old.as_ptr(), layout);
            Some(new)
        }
    }

    #[test]
    fn every_form_survives_being_moved_and_keeps_working() {
        let t = 1_700_000_000_000;
        // Small, Medium, Large, and a Large deque that wraps its buffer.
        let forms = [(1, 1, 0), (10, 3_000, 1), (500, 1, 2), (5_000, 1, 2)];
        for (requests, gap, moves) in forms {
            let mut log = TimeLog::default();
            for i in 0..requests {
                // Past 2,000 requests the oldest leave the front.
                log.record(t + i * gap, 2_000 * gap as u64, 1 + (i as u64 % 3), 1);
            }
            if let Repr::Large(large) = &log.0 {
                let wraps = !large.stream.bytes.as_slices().1.is_empty();
                assert_eq!(wraps, requests > 2_000, "{requests} requests");
            }
            let before = log.clone();
            let moved = unsafe { log.relocate(&mut copy_elsewhere) };
            assert_eq!(moved, moves, "{requests} requests");
            assert_eq!(log, before);
            let later = t + requests * gap + 10;
            let mut reference = before.clone();
            log.record(later, 2_000 * gap as u64, 2, 1);
            reference.record(later, 2_000 * gap as u64, 2, 1);
            assert_eq!(log.refund(3), reference.refund(3));
            assert_eq!(log, reference);
        }
    }

    #[test]
    fn nothing_moves_when_the_defragmenter_declines() {
        let mut log = TimeLog::default();
        for i in 0..500 {
            log.record(1_700_000_000_000 + i, 600_000, 1, 1);
        }
        let before = log.clone();
        assert_eq!(unsafe { log.relocate(&mut |_, _| None) }, 0);
        assert_eq!(log, before);
    }

    #[test]
    fn requests_seconds_apart_fit_the_medium_block() {
        let mut log = TimeLog::default();
        for i in 0..10 {
            log.record(1_700_000_000_000 + i * 3_000, 600_000, 1, 1);
        }
        assert!(matches!(log.0, Repr::Medium(_)));
        assert_eq!(log.heap_size(), 48);
        assert_eq!(log.len(), 10);
    }

    #[test]
    fn unit_costs_with_small_gaps_take_one_byte_and_any_cost_at_most_six() {
        let mut log = TimeLog::default();
        for i in 0..1000 {
            log.record(i * 50, 1 << 20, 1, 1);
        }
        assert_eq!(log.encode().entries.len(), 1000);
        let mut costly = TimeLog::default();
        for i in 0..1000 {
            costly.record(i * 50, 1 << 20, 1 << 32, 1);
        }
        assert_eq!(costly.encode().entries.len(), 6 * 1000);
    }

    #[test]
    fn precision_merges_a_cell_into_its_newest_entry() {
        let mut log = TimeLog::default();
        for at in [1_000, 1_400, 1_999, 2_000, 2_500] {
            log.record(at, 60_000, 1, 1_000);
        }
        assert_eq!(entries(&log), [(1_999, 3), (2_500, 2)]);
    }

    #[test]
    fn the_window_only_grows_and_prunes_only_what_it_expired() {
        let mut log = TimeLog::default();
        log.record(0, 10_000, 1, 1);
        log.record(5_000, 1_000, 1, 1);
        assert_eq!(log.window(), 10_000);
        assert_eq!(entries(&log), [(0, 1), (5_000, 1)]);
        log.record(10_000, 1_000, 1, 1);
        assert_eq!(entries(&log), [(5_000, 1), (10_000, 1)]);
    }

    #[test]
    fn refund_takes_units_from_the_newest_entries() {
        let mut log = TimeLog::default();
        log.record(1, 100, 5, 1);
        log.record(2, 100, 3, 1);
        assert_eq!(log.refund(4), 4);
        assert_eq!(entries(&log), [(1, 4)]);
        assert_eq!(log.refund(10), 4);
        assert!(log.is_empty());
    }

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
        let cost = prop_oneof![4 => Just(1u64), 2 => 1u64..100, 1 => Just(MAX_COST / 3)];
        prop_oneof![
            6 => (0i64..300, prop_oneof![Just(0i64), Just(1 << 30)], 1u64..2_000, cost, prop_oneof![Just(1u64), 1u64..50])
                .prop_map(|(tick, jump, window, cost, precision)| Op::Record { tick: tick + jump, window, cost, precision }),
            1 => (1u64..300).prop_map(Op::Refund),
        ]
    }

    /// The log's rules over a plain list.
    fn model_record(
        model: &mut Vec<Entry>,
        window: &mut u64,
        at: Millis,
        w: u64,
        cost: u64,
        p: u64,
    ) {
        *window = (*window).max(w);
        model.retain(|e| e.at > at - *window as i64);
        match model.last_mut() {
            Some(last)
                if last.at / p as i64 == at / p as i64
                    && last.cost.checked_add(cost).is_some_and(|c| c <= MAX_COST) =>
            {
                last.at = at;
                last.cost += cost;
            }
            _ => model.push(Entry { at, cost }),
        }
    }

    fn model_refund(model: &mut Vec<Entry>, units: u64) -> u64 {
        let mut removed = 0;
        while removed < units {
            let Some(last) = model.last_mut() else { break };
            let taken = last.cost.min(units - removed);
            last.cost -= taken;
            removed += taken;
            if last.cost == 0 {
                model.pop();
            }
        }
        removed
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]
        #[test]
        fn behaves_like_a_list_of_entries(ops in proptest::collection::vec(op(), 0..200)) {
            let mut log = TimeLog::default();
            let mut model: Vec<Entry> = Vec::new();
            let mut window = 0;
            let mut now: Millis = 1_000;
            for op in ops {
                match op {
                    Op::Record { tick, window: w, cost, precision } => {
                        now += tick;
                        let len_after = log.len_after_record(now, w, cost, precision);
                        let expires = log.record(now, w, cost, precision);
                        model_record(&mut model, &mut window, now, w, cost, precision);
                        prop_assert_eq!(expires, now + window as i64);
                        prop_assert_eq!(len_after, model.len() as u64);
                    }
                    Op::Refund(units) => {
                        prop_assert_eq!(log.refund(units), model_refund(&mut model, units));
                        // An emptied log keeps no window (its key is deleted).
                        if model.is_empty() {
                            window = 0;
                        }
                    }
                }
                let view = log.view();
                prop_assert_eq!(view.entries().collect::<Vec<_>>(), model.clone());
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
