//! The three ways a log is stored.
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

use super::codec::{push_entry, push_varint, read_varint, Cursor, Entries, MAX_VARINT_LEN};
use super::{Entry, EntryDeque, Millis, TimeLog, View, MAX_COST};
use std::alloc::Layout;
use std::collections::VecDeque;
use std::mem::ManuallyDrop;
use std::ptr::{self, NonNull};

pub(super) const SMALL_BYTES: usize = 14;

pub(super) const MEDIUM_BYTES: usize = 47;

/// A heap log this short is packed again if it fits (well below what fills
/// a packed block, so a log at the boundary does not bounce).
pub(super) const DEMOTE_AT: u64 = 8;

/// The most entries a packed log can hold: one byte each after a header
/// of at least four.
pub(super) const PACKED_ENTRIES: u64 = (MEDIUM_BYTES - 4) as u64;

/// Below this many bytes of capacity a heap deque never bothers to shrink.
pub(super) const MIN_SHRINK_CAPACITY: usize = 64;

#[derive(Clone, Debug)]
pub(super) enum Repr {
    Small { len: u8, bytes: [u8; SMALL_BYTES] },
    Medium(Box<MediumBlock>),
    Large(Box<Large>),
}

#[derive(Clone, Debug)]
pub(super) struct MediumBlock {
    pub(super) len: u8,
    pub(super) bytes: [u8; MEDIUM_BYTES],
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

impl TimeLog {
    pub fn view(&self) -> View<'_> {
        match &self.0 {
            Repr::Small { len, bytes } => packed_view(&bytes[..usize::from(*len)]),
            Repr::Medium(block) => packed_view(&block.bytes[..usize::from(block.len)]),
            Repr::Large(large) => large.stream.view(Some(large.len)),
        }
    }

    pub fn is_empty(&self) -> bool {
        match &self.0 {
            Repr::Small { len, .. } => *len == 0,
            Repr::Medium(block) => block.len == 0,
            Repr::Large(large) => large.len == 0,
        }
    }

    /// At least as many entries as the log holds, without counting a
    /// packed log's.
    pub fn len_bound(&self) -> u64 {
        match &self.0 {
            Repr::Large(large) => large.len,
            _ => PACKED_ENTRIES,
        }
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
            // SAFETY: the box and the deque's buffer are allocations of the
            // global allocator with these layouts; `relocate` keeps the
            // contract this function's caller promised.
            Repr::Medium(block) => unsafe { usize::from(relocate_box(block, relocate)) },
            // SAFETY: as above.
            Repr::Large(large) => unsafe {
                let bytes = relocate_bytes(&mut large.stream.bytes, relocate);
                usize::from(bytes) + usize::from(relocate_box(large, relocate))
            },
        }
    }

    /// Runs `change` on the entries, in whichever form keeps them, then
    /// stores the result in the smallest form that holds it.
    pub(super) fn edit<T>(&mut self, change: impl FnOnce(&mut dyn EntryDeque) -> T) -> T {
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
    pub(super) fn packed_stream(&self) -> Stream<StackBytes> {
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
pub(super) fn packed_view(bytes: &[u8]) -> View<'_> {
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
pub(super) struct Packed {
    pub(super) bytes: StackBytes,
}

impl Packed {
    pub(super) fn of<B: ByteDeque>(stream: &Stream<B>) -> Option<Packed> {
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

    pub(super) fn into_repr(self) -> Repr {
        let mut repr = Repr::default();
        self.store_in(&mut repr);
        repr
    }

    /// Stores the bytes in the 16-byte block, or in a 48-byte one (reusing
    /// one `repr` already holds).
    pub(super) fn store_in(&self, repr: &mut Repr) {
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

/// Where a stream's entry bytes are kept: a heap deque, or a stack buffer
/// while a packed log is being changed.
pub(super) trait ByteDeque: Extend<u8> {
    fn slices(&self) -> (&[u8], &[u8]);
    fn len(&self) -> usize;
    fn drain_front(&mut self, count: usize);
    fn truncate(&mut self, keep: usize);
}

/// Entries as bytes, with the header fields that make sense of them.
#[derive(Clone, Debug)]
pub(super) struct Stream<B> {
    pub(super) window: u64,
    /// The time the first entry's gap counts from.
    pub(super) base: Millis,
    pub(super) newest: Millis,
    pub(super) total: u128,
    pub(super) bytes: B,
}

impl<B: ByteDeque> Stream<B> {
    pub(super) fn cursor(&self) -> Cursor<'_> {
        let (first, second) = self.bytes.slices();
        Cursor::over(first, second, self.base, self.newest)
    }

    pub(super) fn view(&self, len: Option<u64>) -> View<'_> {
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
        // Gaps are unsigned: entries only ever arrive in time order.
        debug_assert!(entry.at >= self.newest, "{entry:?} after {}", self.newest);
        debug_assert!((1..=MAX_COST).contains(&entry.cost));
        push_entry(&mut self.bytes, self.newest, entry);
        self.newest = entry.at;
        self.total += u128::from(entry.cost);
    }
}

/// Where a log is packed or changed on the stack: no allocation on the
/// hot path. Room for a full packed block and one more entry; more than
/// that is never written (`written` would say `None`).
#[derive(Clone, Debug)]
pub(super) struct StackBytes {
    pub(super) len: usize,
    pub(super) bytes: [u8; 2 * MEDIUM_BYTES],
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
    pub(super) fn written(&self) -> Option<&[u8]> {
        self.bytes.get(..self.len)
    }

    pub(super) fn push_slice(&mut self, more: &[u8]) {
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
pub(crate) unsafe fn relocate_box<T>(boxed: &mut Box<T>, relocate: &mut Relocate) -> bool {
    let old = NonNull::from(&mut **boxed).cast::<u8>();
    let Some(new) = relocate(old, Layout::new::<T>()) else {
        return false;
    };
    // The old allocation is already freed: overwrite the box, never drop it.
    // SAFETY: `new` holds a `T` moved bit for bit, allocated with `T`'s
    // layout (the caller's contract), so it is a valid box of its own.
    unsafe { ptr::write(boxed, Box::from_raw(new.as_ptr().cast::<T>())) };
    true
}

/// SAFETY: as for [`TimeLog::relocate`].
pub(super) unsafe fn relocate_bytes(deque: &mut VecDeque<u8>, relocate: &mut Relocate) -> bool {
    if deque.capacity() == 0 {
        return false;
    }
    // Both conversions keep the buffer: no allocation, and O(1) back.
    let mut bytes = ManuallyDrop::new(Vec::from(std::mem::take(deque)));
    let (old, len, capacity) = (bytes.as_mut_ptr(), bytes.len(), bytes.capacity());
    let layout = Layout::array::<u8>(capacity).expect("the layout of a live buffer");
    let moved = NonNull::new(old).and_then(|old| relocate(old, layout));
    let buffer = match moved {
        // SAFETY: `new` holds the same `len` initialised bytes in an
        // allocation of `capacity` bytes (the caller's contract).
        Some(new) => unsafe { Vec::from_raw_parts(new.as_ptr(), len, capacity) },
        None => ManuallyDrop::into_inner(bytes),
    };
    *deque = VecDeque::from(buffer);
    moved.is_some()
}

/// A log that outgrew the packed blocks.
#[derive(Clone, Debug)]
pub(super) struct Large {
    pub(super) stream: Stream<VecDeque<u8>>,
    pub(super) len: u64,
}

impl Large {
    pub(super) fn new(window: u64) -> Large {
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

    pub(super) fn from_stream<B: ByteDeque>(stream: &Stream<B>) -> Large {
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
    pub(super) fn shrink_if_sparse(&mut self) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::tests::{entries, record};

    #[test]
    fn a_small_log_fits_its_block_and_a_busy_one_moves_out() {
        let mut log = TimeLog::default();
        let t = 1_700_000_000_000;
        record(&mut log, t, 3_600_000, 10, 1);
        assert!(matches!(log.0, Repr::Small { .. }));
        assert_eq!(log.heap_size(), 0);
        assert_eq!(entries(&log), [(t, 10)]);
        for i in 1..100 {
            record(&mut log, t + i, 3_600_000, 1, 1);
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
        // SAFETY: `old` is a live allocation of `layout` (relocate's
        // contract); the copy is of that size, and `old` is freed once.
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
                record(
                    &mut log,
                    t + i * gap,
                    2_000 * gap as u64,
                    1 + (i as u64 % 3),
                    1,
                );
            }
            if let Repr::Large(large) = &log.0 {
                let wraps = !large.stream.bytes.as_slices().1.is_empty();
                assert_eq!(wraps, requests > 2_000, "{requests} requests");
            }
            let before = log.clone();
            // SAFETY: copy_elsewhere keeps relocate's contract.
            let moved = unsafe { log.relocate(&mut copy_elsewhere) };
            assert_eq!(moved, moves, "{requests} requests");
            assert_eq!(log, before);
            let later = t + requests * gap + 10;
            let mut reference = before.clone();
            record(&mut log, later, 2_000 * gap as u64, 2, 1);
            record(&mut reference, later, 2_000 * gap as u64, 2, 1);
            assert_eq!(log.refund(3), reference.refund(3));
            assert_eq!(log, reference);
        }
    }

    #[test]
    fn nothing_moves_when_the_defragmenter_declines() {
        let mut log = TimeLog::default();
        for i in 0..500 {
            record(&mut log, 1_700_000_000_000 + i, 600_000, 1, 1);
        }
        let before = log.clone();
        // SAFETY: declining moves nothing.
        assert_eq!(unsafe { log.relocate(&mut |_, _| None) }, 0);
        assert_eq!(log, before);
    }

    #[test]
    fn requests_seconds_apart_fit_the_medium_block() {
        let mut log = TimeLog::default();
        for i in 0..10 {
            record(&mut log, 1_700_000_000_000 + i * 3_000, 600_000, 1, 1);
        }
        assert!(matches!(log.0, Repr::Medium(_)));
        assert_eq!(log.heap_size(), 48);
        assert_eq!(log.len(), 10);
    }

    #[test]
    fn unit_costs_with_small_gaps_take_one_byte_and_any_cost_at_most_six() {
        let mut log = TimeLog::default();
        for i in 0..1000 {
            record(&mut log, 1 + i * 50, 1 << 20, 1, 1);
        }
        assert_eq!(log.encode().entries.len(), 1000);
        let mut costly = TimeLog::default();
        for i in 0..1000 {
            record(&mut costly, 1 + i * 50, 1 << 20, 1 << 32, 1);
        }
        assert_eq!(costly.encode().entries.len(), 6 * 1000);
    }
}
