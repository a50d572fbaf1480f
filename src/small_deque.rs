//! A byte deque that keeps up to 23 bytes inside itself.
//!
//! Most limiter keys hold a handful of entries, whose gaps fit in a couple
//! of dozen bytes. Kept inline, they live in the key's one allocation: no
//! second block to allocate, and no second cache miss on every call. The
//! inline form takes no more room than the heap form's `VecDeque`, whose
//! capacity field leaves the compiler a spare bit pattern for the tag.

use std::collections::VecDeque;

const INLINE: usize = 23;
/// Below this many bytes of capacity a heap deque never bothers to shrink.
const MIN_SHRINK_CAPACITY: usize = 64;

#[derive(Clone, Debug)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(VecDeque<u8>),
}

#[derive(Clone, Debug)]
pub struct SmallDeque(Repr);

impl Default for SmallDeque {
    fn default() -> Self {
        SmallDeque(Repr::Inline {
            len: 0,
            bytes: [0; INLINE],
        })
    }
}

/// Equal contents are equal deques, wherever they are kept.
impl PartialEq for SmallDeque {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for SmallDeque {}

impl SmallDeque {
    pub fn from_slice(bytes: &[u8]) -> SmallDeque {
        let mut deque = SmallDeque::default();
        deque.extend_from_slice(bytes);
        deque
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Inline { len, .. } => usize::from(*len),
            Repr::Heap(deque) => deque.len(),
        }
    }

    /// The contents in order, as at most two slices.
    pub fn as_slices(&self) -> (&[u8], &[u8]) {
        match &self.0 {
            Repr::Inline { len, bytes } => (&bytes[..usize::from(*len)], &[]),
            Repr::Heap(deque) => deque.as_slices(),
        }
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = u8> + '_ {
        let (front, back) = self.as_slices();
        front.iter().chain(back).copied()
    }

    /// Heap bytes held (none while inline), for `MEMORY USAGE`.
    pub fn heap_size(&self) -> usize {
        match &self.0 {
            Repr::Inline { .. } => 0,
            Repr::Heap(deque) => deque.capacity(),
        }
    }

    pub fn extend_from_slice(&mut self, more: &[u8]) {
        self.make_room(more.len()).extend(more);
    }

    pub fn extend_zeros(&mut self, count: usize) {
        self.make_room(count).extend(std::iter::repeat_n(0, count));
    }

    /// Removes the first `count` bytes.
    pub fn drain_front(&mut self, count: usize) {
        match &mut self.0 {
            Repr::Inline { len, bytes } => {
                let count = count.min(usize::from(*len));
                bytes.copy_within(count..usize::from(*len), 0);
                *len -= count as u8;
            }
            Repr::Heap(deque) => {
                deque.drain(..count.min(deque.len()));
                self.shrink_if_sparse();
            }
        }
    }

    /// Keeps the first `keep` bytes.
    pub fn truncate(&mut self, keep: usize) {
        match &mut self.0 {
            Repr::Inline { len, .. } => {
                if keep < usize::from(*len) {
                    *len = keep as u8;
                }
            }
            Repr::Heap(deque) => {
                deque.truncate(keep);
                self.shrink_if_sparse();
            }
        }
    }

    /// Moves the bytes to the heap if `extra` more would not fit inline,
    /// and returns something to extend.
    fn make_room(&mut self, extra: usize) -> Appender<'_> {
        if let Repr::Inline { len, bytes } = &self.0 {
            let len = usize::from(*len);
            if len + extra > INLINE {
                let mut deque = VecDeque::with_capacity((len + extra).next_power_of_two());
                deque.extend(&bytes[..len]);
                self.0 = Repr::Heap(deque);
            }
        }
        Appender(&mut self.0)
    }

    /// After a burst, gives memory back: inline again once few bytes are
    /// left (half the inline room, so that a deque at the boundary does not
    /// move back and forth), or a smaller buffer once three quarters of it
    /// are unused. Either keeps the work amortised O(1) per byte.
    fn shrink_if_sparse(&mut self) {
        let Repr::Heap(deque) = &mut self.0 else {
            return;
        };
        if deque.len() <= INLINE / 2 {
            let mut bytes = [0; INLINE];
            for (slot, byte) in bytes.iter_mut().zip(deque.iter()) {
                *slot = *byte;
            }
            self.0 = Repr::Inline {
                len: deque.len() as u8,
                bytes,
            };
        } else if deque.capacity() > MIN_SHRINK_CAPACITY && deque.len() < deque.capacity() / 4 {
            deque.shrink_to(deque.len() * 2);
        }
    }
}

/// Appends to whichever form has room (`make_room` chose).
struct Appender<'a>(&'a mut Repr);

impl Extend<u8> for Appender<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, more: I) {
        match self.0 {
            Repr::Inline { len, bytes } => {
                for byte in more {
                    bytes[usize::from(*len)] = byte;
                    *len += 1;
                }
            }
            Repr::Heap(deque) => deque.extend(more),
        }
    }
}

impl<'a> Extend<&'a u8> for Appender<'_> {
    fn extend<I: IntoIterator<Item = &'a u8>>(&mut self, more: I) {
        Extend::<u8>::extend(self, more.into_iter().copied());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stays_inline_as_small_as_a_vecdeque() {
        assert_eq!(
            std::mem::size_of::<SmallDeque>(),
            std::mem::size_of::<VecDeque<u8>>()
        );
        let mut deque = SmallDeque::from_slice(&[1; INLINE]);
        assert_eq!(deque.heap_size(), 0);
        deque.extend_zeros(1);
        assert!(deque.heap_size() > 0);
        deque.drain_front(INLINE - 2);
        assert_eq!(deque.heap_size(), 0, "back inline once small");
        assert_eq!(deque.iter().collect::<Vec<_>>(), [1, 1, 0]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Extend(Vec<u8>),
        Zeros(usize),
        DrainFront(usize),
        Truncate(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Op::Extend),
            (0usize..60).prop_map(Op::Zeros),
            (0usize..40).prop_map(Op::DrainFront),
            (0usize..80).prop_map(Op::Truncate),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_vecdeque(ops in proptest::collection::vec(op(), 0..100)) {
            let mut deque = SmallDeque::default();
            let mut model: VecDeque<u8> = VecDeque::new();
            for op in ops {
                match op {
                    Op::Extend(bytes) => {
                        deque.extend_from_slice(&bytes);
                        model.extend(&bytes);
                    }
                    Op::Zeros(count) => {
                        deque.extend_zeros(count);
                        model.extend(std::iter::repeat_n(0, count));
                    }
                    Op::DrainFront(count) => {
                        deque.drain_front(count);
                        model.drain(..count.min(model.len()));
                    }
                    Op::Truncate(keep) => {
                        deque.truncate(keep);
                        model.truncate(keep);
                    }
                }
                prop_assert_eq!(deque.len(), model.len());
                prop_assert!(deque.iter().eq(model.iter().copied()));
                prop_assert!(deque.iter().rev().eq(model.iter().rev().copied()));
            }
        }
    }
}
