//! A key's whole state: its log and, after a denial with `BLOCK ms`, the
//! time its block ends.
//!
//! Most keys are never blocked, so a blocked key pays for its block and an
//! open one does not: the state is the log itself (16 bytes, see
//! `log/forms.rs`), or a pointer to the log and the block's end together.
//!
//! Canonical form, which every change keeps and loading checks: a block
//! ends after the newest entry's time (recording at or after its end
//! clears it), so a stored block is either still in force or ended with
//! nothing recorded since, and equal states are equal however they came.

use crate::log::{relocate_box, DecodeError, Encoded, Millis, Record, Relocate, TimeLog, TIMES};
use std::num::NonZeroU64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State(Form);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Form {
    Open(TimeLog),
    Blocked(Box<Blocked>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Blocked {
    log: TimeLog,
    /// Later than the newest entry's time.
    until: Millis,
}

// An open key costs what its log costs: the block's pointer shares the
// log's 16 bytes (the enum's tag goes in the log's own).
const _: () = assert!(std::mem::size_of::<State>() == 16);

impl Default for State {
    fn default() -> Self {
        State(Form::Open(TimeLog::default()))
    }
}

/// The latest a block may end: a time plus the longest block, which stays
/// far from overflow (see [`TIMES`]).
pub const LATEST_BLOCK_END: Millis = *TIMES.end() + crate::log::MAX_WINDOW as Millis;

impl State {
    pub fn log(&self) -> &TimeLog {
        match &self.0 {
            Form::Open(log) => log,
            Form::Blocked(blocked) => &blocked.log,
        }
    }

    fn log_mut(&mut self) -> &mut TimeLog {
        match &mut self.0 {
            Form::Open(log) => log,
            Form::Blocked(blocked) => &mut blocked.log,
        }
    }

    /// When the stored block ends (it may have ended already).
    pub fn blocked_until(&self) -> Option<Millis> {
        match &self.0 {
            Form::Open(_) => None,
            Form::Blocked(blocked) => Some(blocked.until),
        }
    }

    /// The block's end, if it is still in force at `now`.
    pub fn block_at(&self, now: Millis) -> Option<Millis> {
        self.blocked_until().filter(|&until| now < until)
    }

    /// True when the key holds nothing: no entry and no block, which is a
    /// key that no longer exists.
    pub fn is_empty(&self) -> bool {
        matches!(&self.0, Form::Open(log) if log.is_empty())
    }

    /// When the key expires: when its log holds nothing (newest entry plus
    /// the log's window), or when its block ends, whichever is later.
    pub fn expires_at(&self) -> Millis {
        self.blocked_until()
            .unwrap_or(0)
            .max(log_expiry(self.log()))
    }

    /// Records an allowed request (see [`TimeLog::record`]); a block that
    /// has ended by the recorded time is cleared. Returns the expiry.
    pub fn record(&mut self, record: &Record) -> Millis {
        self.log_mut().record(record);
        let newest = self.log().newest().map_or(0, |e| e.at);
        if self.blocked_until().is_some_and(|until| until <= newest) {
            self.unblock();
        }
        self.expires_at()
    }

    /// Keeps `window` (see [`TimeLog::widen`]); returns the expiry.
    pub fn widen(&mut self, window: NonZeroU64) -> Millis {
        self.log_mut().widen(window);
        self.expires_at()
    }

    /// Refunds up to `units` (see [`TimeLog::refund`]); the block stays.
    pub fn refund(&mut self, units: u64) -> u64 {
        self.log_mut().refund(units)
    }

    /// Blocks the key until `until`, which must be later than its newest
    /// entry. Returns the expiry.
    pub fn block(&mut self, until: Millis) -> Millis {
        debug_assert!(self.accepts_block(until), "{until} on {self:?}");
        match &mut self.0 {
            Form::Blocked(blocked) => blocked.until = until,
            Form::Open(log) => {
                let log = std::mem::take(log);
                self.0 = Form::Blocked(Box::new(Blocked { log, until }));
            }
        }
        self.expires_at()
    }

    /// Whether a block ending at `until` keeps the canonical form.
    pub fn accepts_block(&self, until: Millis) -> bool {
        (1..=LATEST_BLOCK_END).contains(&until) && self.log().newest().is_none_or(|e| e.at < until)
    }

    /// Lifts the block, if any; the log stays as it is.
    pub fn unblock(&mut self) {
        if let Form::Blocked(blocked) = &mut self.0 {
            let log = std::mem::take(&mut blocked.log);
            self.0 = Form::Open(log);
        }
    }

    /// Heap bytes beyond the 16-byte block, for `MEMORY USAGE`.
    pub fn heap_size(&self) -> usize {
        let block = match self.0 {
            Form::Open(_) => 0,
            Form::Blocked(_) => std::mem::size_of::<Blocked>(),
        };
        block + self.log().heap_size()
    }

    /// As [`TimeLog::relocate`], for the block's allocation too.
    ///
    /// # Safety
    ///
    /// As for [`TimeLog::relocate`].
    pub unsafe fn relocate(&mut self, relocate: &mut Relocate) -> usize {
        let moved = match &mut self.0 {
            Form::Open(_) => 0,
            // SAFETY: the box is an allocation of the global allocator;
            // `relocate` keeps the contract this function's caller promised.
            Form::Blocked(blocked) => usize::from(unsafe { relocate_box(blocked, relocate) }),
        };
        // SAFETY: as above.
        moved + unsafe { self.log_mut().relocate(relocate) }
    }

    /// The state as persisted: the log's form, and the block's end (0 for
    /// none).
    pub fn encode(&self) -> (Encoded, Millis) {
        (self.log().encode(), self.blocked_until().unwrap_or(0))
    }

    /// Rebuilds a state from its persisted form, checking the block as the
    /// log is checked: a key with no entry must be blocked, and a block
    /// must end after the newest entry.
    pub fn decode(stored: &Encoded, blocked_until: Millis) -> Result<State, DecodeError> {
        let log = TimeLog::decode(stored)?;
        if log.is_empty() && stored.window != 0 {
            return Err(DecodeError::BadWindow);
        }
        State::with_block(log, blocked_until)
    }

    /// A loaded log (and a block's end, 0 for none), refused if the key
    /// would hold nothing or the block breaks the canonical form.
    pub fn with_block(log: TimeLog, blocked_until: Millis) -> Result<State, DecodeError> {
        let mut state = State(Form::Open(log));
        match blocked_until {
            0 if state.is_empty() => Err(DecodeError::Empty),
            0 => Ok(state),
            until if state.accepts_block(until) => {
                state.block(until);
                Ok(state)
            }
            _ => Err(DecodeError::BadBlock),
        }
    }
}

/// When a log's newest entry leaves its window (0 for an empty log).
fn log_expiry(log: &TimeLog) -> Millis {
    let view = log.view();
    view.newest()
        .map_or(0, |newest| newest.at.saturating_add_unsigned(view.window))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::tests::record;

    #[test]
    fn a_block_lives_beside_the_log_and_ends_when_recorded_past() {
        let mut log = TimeLog::default();
        record(&mut log, 100, 1_000, 1, 1);
        let mut state = State::with_block(log, 0).expect("a log");
        assert_eq!(state.block(5_000), 5_000);
        assert_eq!(state.block_at(4_999), Some(5_000));
        assert_eq!(state.block_at(5_000), None);
        assert_eq!(state.refund(1), 1);
        assert!(!state.is_empty(), "a blocked key outlives its log");
        assert_eq!(state.expires_at(), 5_000);
        let expiry = state.record(&Record {
            at: 5_000,
            window: NonZeroU64::MIN.saturating_add(999),
            cost: NonZeroU64::MIN,
            precision: NonZeroU64::MIN,
        });
        assert_eq!((state.blocked_until(), expiry), (None, 6_000));
    }

    #[test]
    fn loading_refuses_a_non_canonical_block() {
        let mut log = TimeLog::default();
        record(&mut log, 100, 1_000, 1, 1);
        let stored = log.encode();
        assert_eq!(
            State::decode(&stored, 100).err(),
            Some(DecodeError::BadBlock)
        );
        assert_eq!(
            State::decode(&stored, -1).err(),
            Some(DecodeError::BadBlock)
        );
        let blocked = State::decode(&stored, 101).expect("a block after the entry");
        assert_eq!(blocked.encode().1, 101);
        let empty = TimeLog::default().encode();
        assert_eq!(State::decode(&empty, 0).err(), Some(DecodeError::Empty));
        assert_eq!(State::decode(&empty, 7).map(|s| s.expires_at()), Ok(7));
    }
}
