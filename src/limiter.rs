//! The sliding-window decision, in plain Rust.
//!
//! A limit allows at most `max` units of cost in any window of `window`
//! milliseconds. A request of cost `n` at time `now` is allowed exactly when
//! the cost recorded at times `t` with `now - window < t <= now`, plus `n`,
//! is at most `max`. Entries at `t <= now - window` have expired.
//!
//! Deciding and recording are separate steps: [`decide`] only reads the log,
//! and [`record`] is the one way entries enter it, used alike by the command
//! that decided and by a replica or AOF replaying what was decided.

use crate::log::{Millis, TimeLog};
use std::num::NonZeroU64;

/// A request against a limit: `cost` units, where at most `max` units fit in
/// any window of `window` milliseconds. A cost above `max` could never be
/// allowed, so such a request cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    window: NonZeroU64,
    max: NonZeroU64,
    cost: NonZeroU64,
}

impl Request {
    pub fn new(window: NonZeroU64, max: NonZeroU64, cost: NonZeroU64) -> Option<Request> {
        (cost <= max).then_some(Request { window, max, cost })
    }

    pub fn window(&self) -> NonZeroU64 {
        self.window
    }

    pub fn cost(&self) -> NonZeroU64 {
        self.cost
    }
}

/// The four fields every CHECK and PEEK replies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Cost still available in the window after this call.
    pub remaining: u64,
    /// 0 if allowed, else the wait after which the same request would be.
    pub retry_after_ms: u64,
    /// Wait until the window holds nothing; 0 when it already holds nothing.
    pub reset_after_ms: u64,
}

/// The decision on a request, with the time it is taken at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    /// The server clock, or the newest entry's time if the clock reads
    /// earlier: time never runs backwards for a key, so a clock stepping
    /// back cannot free capacity early.
    pub at: Millis,
}

/// What the window holds at one moment, seen by one request.
struct Occupancy {
    /// Cost recorded within the window.
    used: u64,
    /// Whether the request's cost fits beside it.
    fits: bool,
    /// 0 if it fits, else the wait until it would.
    retry_after_ms: u64,
    /// Wait until the window empties, 0 if it is empty.
    reset_after_ms: u64,
}

impl Occupancy {
    /// The reply for a call that leaves the window as it is.
    fn standing(&self, request: &Request) -> Decision {
        Decision {
            allowed: self.fits,
            remaining: request.max.get().saturating_sub(self.used),
            retry_after_ms: self.retry_after_ms,
            reset_after_ms: self.reset_after_ms,
        }
    }
}

/// CHECK: the verdict on `request` against `log` (`None` for a key that
/// does not exist) at clock reading `clock`. An allowed request must then be
/// passed to [`record`] with the verdict's time.
pub fn decide(log: Option<&TimeLog>, clock: Millis, request: &Request) -> Verdict {
    let at = decision_time(log, clock);
    let seen = occupancy(log, at, request);
    let decision = if seen.fits {
        Decision {
            allowed: true,
            remaining: request.max.get() - seen.used - request.cost.get(),
            retry_after_ms: 0,
            reset_after_ms: request.window.get(),
        }
    } else {
        seen.standing(request)
    };
    Verdict { decision, at }
}

/// PEEK: whether CHECK would allow the request, while the log stays as it
/// is, so `remaining` and `reset_after_ms` describe the window as it stands.
pub fn peek(log: Option<&TimeLog>, clock: Millis, request: &Request) -> Decision {
    occupancy(log, decision_time(log, clock), request).standing(request)
}

/// The clock, or the newest entry's time if the clock reads earlier.
fn decision_time(log: Option<&TimeLog>, clock: Millis) -> Millis {
    log.and_then(TimeLog::newest)
        .map_or(clock, |newest| clock.max(newest))
}

/// Records `cost` entries at `at`, first dropping those that have expired
/// by then. Returns the time the key expires: when its newest entry does.
pub fn record(log: &mut TimeLog, at: Millis, window: NonZeroU64, cost: NonZeroU64) -> Millis {
    let horizon = at.saturating_sub_unsigned(window.get());
    while log.oldest().is_some_and(|oldest| oldest <= horizon) {
        log.pop_oldest();
    }
    log.push(at, cost.get());
    log.newest()
        .unwrap_or(at)
        .saturating_add_unsigned(window.get())
}

/// UNDO: removes up to `count` of the newest entries; returns how many went.
pub fn refund(log: &mut TimeLog, count: NonZeroU64) -> u64 {
    let mut removed = 0;
    while removed < count.get() && log.pop_newest().is_some() {
        removed += 1;
    }
    removed
}

const EMPTY_WINDOW: Occupancy = Occupancy {
    used: 0,
    fits: true,
    retry_after_ms: 0,
    reset_after_ms: 0,
};

/// Reads the window at `now`. Entries that expired but were not pruned yet
/// are skipped one by one; when a request is denied there are fewer of them
/// than its cost (else it would fit), and allowed requests prune them, so a
/// busy key never piles them up.
fn occupancy(log: Option<&TimeLog>, now: Millis, request: &Request) -> Occupancy {
    let Some(log) = log else {
        return EMPTY_WINDOW;
    };
    let horizon = now.saturating_sub_unsigned(request.window.get());
    let mut entries = log.iter().peekable();
    let mut expired = 0u64;
    while entries.next_if(|&t| t <= horizon).is_some() {
        expired += 1;
    }
    let used = log.len() - expired;
    let Some(newest) = log.newest().filter(|_| used > 0) else {
        return EMPTY_WINDOW;
    };
    // An entry at `t` (after the horizon) expires `t - horizon` ms from now.
    let until_expiry = |t: Millis| t.abs_diff(horizon);
    // The request fits once the `over` oldest live entries expire; `over`
    // is at most `used` because a request's cost is at most `max`.
    let over = used
        .saturating_add(request.cost.get())
        .saturating_sub(request.max.get());
    let retry_after_ms = match over {
        0 => 0,
        _ => entries.nth((over - 1) as usize).map_or(0, until_expiry),
    };
    Occupancy {
        used,
        fits: over == 0,
        retry_after_ms,
        reset_after_ms: until_expiry(newest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::{self, Call};
    use proptest::prelude::*;

    fn nz(n: u64) -> NonZeroU64 {
        NonZeroU64::new(n).expect("test values are positive")
    }

    fn request(window: u64, max: u64, cost: u64) -> Request {
        Request::new(nz(window), nz(max), nz(cost)).expect("cost <= max")
    }

    /// Windows, maxes and costs small enough for the model's brute force;
    /// the clock mostly moves forward and sometimes steps back.
    fn call() -> impl Strategy<Value = Call> {
        let limit =
            (1u64..40, 1u64..8).prop_flat_map(|(window, max)| (Just(window), Just(max), 1..=max));
        let tick = -20i64..30;
        prop_oneof![
            8 => (prop::bool::weighted(0.75), tick, limit).prop_map(|(check, tick, (window, max, cost))| {
                Call::Request { check, tick, window, max, cost }
            }),
            1 => (1u64..4).prop_map(Call::Undo),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        #[test]
        fn matches_the_reference_model(calls in proptest::collection::vec(call(), 1..120)) {
            let outcome = reference::compare(&calls);
            prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
        }
    }

    #[test]
    fn cost_above_max_is_unrepresentable() {
        assert!(Request::new(nz(10), nz(3), nz(4)).is_none());
    }

    #[test]
    fn missing_key_peeks_as_full_capacity() {
        let d = peek(None, 5, &request(1000, 5, 1));
        assert_eq!(
            d,
            Decision {
                allowed: true,
                remaining: 5,
                retry_after_ms: 0,
                reset_after_ms: 0
            }
        );
    }

    #[test]
    fn a_full_window_denies_until_its_oldest_entry_expires() {
        let mut log = TimeLog::default();
        let r = request(1000, 2, 1);
        for now in [100, 400] {
            let v = decide(Some(&log).filter(|l| !l.is_empty()), now, &r);
            assert!(v.decision.allowed);
            record(&mut log, v.at, r.window(), r.cost());
        }
        let denied = decide(Some(&log), 500, &r).decision;
        assert_eq!(
            denied,
            Decision {
                allowed: false,
                remaining: 0,
                retry_after_ms: 600,
                reset_after_ms: 900
            }
        );
        assert!(!decide(Some(&log), 1099, &r).decision.allowed);
        assert!(decide(Some(&log), 1100, &r).decision.allowed);
    }

    #[test]
    fn a_clock_stepping_back_frees_nothing() {
        let mut log = TimeLog::default();
        let r = request(100, 1, 1);
        let v = decide(None, 10_000, &r);
        record(&mut log, v.at, r.window(), r.cost());
        let back = decide(Some(&log), 5_000, &r);
        assert_eq!(back.at, 10_000);
        assert_eq!(back.decision.retry_after_ms, 100);
    }
}
