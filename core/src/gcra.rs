//! The token bucket (GCRA, the generic cell rate algorithm), beside the
//! sliding window, in plain Rust.
//!
//! A limit allows `count` tokens per `period` ms sustained, in bursts of
//! up to `max_burst + 1` tokens: a bucket of that many tokens that drains
//! at `count / period` tokens per ms, and a request of `n` tokens fits when
//! the bucket has room for them. A key stores when it was last charged, the
//! period of that charge and the tokens it held then, exactly: in units of
//! `1 / period` of a token, so a drain of `count / period` tokens per ms is
//! `count` units per ms, an integer. There is no rounding anywhere, for
//! any count/period ratio; waits are exact fractions of a millisecond
//! (`units / count`) until a reply rounds them.
//!
//! Under fixed parameters this is GCRA exactly: redis-cell's theoretical
//! arrival time is the last charge plus `level / count` ms, and every reply
//! field is redis-cell's formula over it. Replies round waits as redis-cell
//! 0.5.0 does, as Redis's held-out `GCRA` does, or to exact milliseconds
//! ([`Units`]).
//!
//! A call whose parameters differ from the charge's (redis-cell #54) keeps
//! the tokens the key held then: the same units if the period is the same,
//! else the tokens rounded up to whole ones (a partly drained token counts
//! whole, never less), at most the [`MAX_EXACT`] / period whole tokens a
//! bucket of the new period can hold; drained at the call's own rate since
//! the charge. Raising the rate frees capacity at once; a smaller burst
//! leaves the key over full (limited until it drains under), as GCRA's
//! theoretical arrival time does.
//!
//! Settlements (issue 27): [`charge`] adds tokens whatever the bucket
//! holds, even past full (a debt that drains at the rate: requests are
//! limited until it has drained enough), refused only past [`MAX_EXACT`];
//! [`refund`] takes tokens back, at most what the bucket holds, and a
//! bucket left holding nothing is deleted.
//!
//! Every number stays exact in a double (the script twin's numbers): the
//! bounds keep counts, tokens and the capacity `(max_burst + 1) × period`
//! at most [`MAX_EXACT`], and a time plus a wait below 2^53.

use crate::log::Millis;

/// The longest period: 90 days (a stored bucket keeps it in 33 bits).
pub const MAX_PERIOD: u64 = 90 * 24 * 60 * 60 * 1000;

/// The most a count, a request's tokens or a bucket's capacity (`(max_burst
/// + 1) × period`, in token-milliseconds) may be.
pub const MAX_EXACT: u64 = 9_000_000_000_000_000;

/// The latest time a bucket holds: 2^42 − 1 ms, in the year 2109.
pub const LATEST: Millis = (1 << 42) - 1;

// A time plus the longest wait stays exact in a double, and a bucket's
// three fields fill 128 bits.
const _: () = assert!(MAX_EXACT + LATEST as u64 <= 1 << 53);
const _: () = assert!(MAX_PERIOD < 1 << PERIOD_BITS && MAX_EXACT < 1 << LEVEL_BITS);

/// `count` tokens per `period` ms, bursts of up to `burst` tokens. Only a
/// limit within the bounds can be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// `max_burst + 1`.
    burst: u64,
    count: u64,
    period: u64,
}

/// Why a limit cannot be built.
#[derive(Debug, PartialEq, Eq)]
pub enum LimitError {
    Count,
    Period,
    /// `(max_burst + 1) × period` is above [`MAX_EXACT`].
    Capacity,
}

impl Limit {
    pub fn new(max_burst: u64, count: u64, period: u64) -> Result<Limit, LimitError> {
        if !(1..=MAX_EXACT).contains(&count) {
            return Err(LimitError::Count);
        }
        if !(1..=MAX_PERIOD).contains(&period) {
            return Err(LimitError::Period);
        }
        let burst = max_burst.checked_add(1).ok_or(LimitError::Capacity)?;
        match burst.checked_mul(period) {
            Some(capacity) if capacity <= MAX_EXACT => Ok(Limit {
                burst,
                count,
                period,
            }),
            _ => Err(LimitError::Capacity),
        }
    }

    /// `max_burst + 1`: the most tokens one burst may take.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn period(&self) -> u64 {
        self.period
    }

    /// A full bucket, in `1 / period` tokens.
    fn capacity(&self) -> u64 {
        self.burst * self.period
    }
}

/// What a key stores: the time of its last charge, that charge's period,
/// and the tokens it held then in `1 / period` tokens (at least one unit:
/// a key that holds nothing does not exist). 16 bytes, the block Redis
/// points at, so a key costs what a sliding-window key with one request
/// costs: the time in 42 bits, the period in 33 and the level in 53.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bucket([u64; 2]);

const PERIOD_BITS: u32 = 33;
const LEVEL_BITS: u32 = 53;

/// Why stored numbers do not form a bucket.
#[derive(Debug, PartialEq, Eq)]
pub enum BucketError {
    /// The time is outside `1..=LATEST`.
    Time,
    /// The period is outside `1..=MAX_PERIOD`.
    Period,
    /// The level is outside `1..=MAX_EXACT`.
    Level,
}

impl BucketError {
    /// What went wrong, for the server's log.
    pub fn describe(&self) -> &'static str {
        match self {
            BucketError::Time => "the time of the last charge is out of range",
            BucketError::Period => "the period is out of range",
            BucketError::Level => "the level is zero or out of range",
        }
    }
}

impl Bucket {
    /// A bucket from stored numbers (an RDB payload, a replicated charge),
    /// refused unless the module could have written it.
    pub fn new(at: Millis, period: u64, level: u64) -> Result<Bucket, BucketError> {
        if !(1..=LATEST).contains(&at) {
            return Err(BucketError::Time);
        }
        if !(1..=MAX_PERIOD).contains(&period) {
            return Err(BucketError::Period);
        }
        if !(1..=MAX_EXACT).contains(&level) {
            return Err(BucketError::Level);
        }
        Ok(Bucket::pack(at, period, level))
    }

    fn pack(at: Millis, period: u64, level: u64) -> Bucket {
        debug_assert!(
            Bucket::new_is_valid(at, period, level),
            "{at} {period} {level}"
        );
        let packed = (at as u128) << (PERIOD_BITS + LEVEL_BITS)
            | u128::from(period) << LEVEL_BITS
            | u128::from(level);
        Bucket([(packed >> 64) as u64, packed as u64])
    }

    fn new_is_valid(at: Millis, period: u64, level: u64) -> bool {
        (1..=LATEST).contains(&at)
            && (1..=MAX_PERIOD).contains(&period)
            && (1..=MAX_EXACT).contains(&level)
    }

    fn packed(&self) -> u128 {
        u128::from(self.0[0]) << 64 | u128::from(self.0[1])
    }

    /// When the key was last charged.
    pub fn at(&self) -> Millis {
        (self.packed() >> (PERIOD_BITS + LEVEL_BITS)) as Millis
    }

    /// The period of the last charge, in ms.
    pub fn period(&self) -> u64 {
        (self.packed() >> LEVEL_BITS) as u64 & ((1 << PERIOD_BITS) - 1)
    }

    /// The tokens held after the last charge, in `1 / period` tokens.
    pub fn level(&self) -> u64 {
        self.packed() as u64 & ((1 << LEVEL_BITS) - 1)
    }
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("at", &self.at())
            .field("period", &self.period())
            .field("level", &self.level())
            .finish()
    }
}

// What Redis points at costs 16 bytes.
const _: () = assert!(std::mem::size_of::<Bucket>() == 16);

/// A wait of exactly `units / count` ms: units of `1 / period` tokens to
/// drain at `count` units per ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wait {
    units: u64,
    count: u64,
}

/// How a reply gives its waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Units {
    /// Whole seconds as redis-cell 0.5.0 rounds them: the whole seconds,
    /// plus one if the rest is at least a millisecond.
    CellSeconds,
    /// Whole seconds rounded up, as Redis's held-out `GCRA` rounds them.
    Seconds,
    /// Milliseconds rounded up: the first millisecond at which the wait is
    /// over, what a Retry-After or a client's sleep wants.
    Milliseconds,
}

impl Wait {
    /// Whole milliseconds, rounded down.
    pub fn floor_ms(&self) -> u64 {
        self.units / self.count
    }

    /// Whole milliseconds, rounded up.
    pub fn ceil_ms(&self) -> u64 {
        self.units.div_ceil(self.count)
    }

    /// The wait as a reply gives it. redis-cell's "seconds, plus one if the
    /// rest is at least a millisecond" is the whole milliseconds rounded
    /// up to seconds; a ceiling in seconds is the ceiling in ms rounded up.
    pub fn in_units(&self, units: Units) -> u64 {
        match units {
            Units::CellSeconds => self.floor_ms().div_ceil(1000),
            Units::Seconds => self.ceil_ms().div_ceil(1000),
            Units::Milliseconds => self.ceil_ms(),
        }
    }
}

/// The five fields of redis-cell's reply, before units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub limited: bool,
    /// `max_burst + 1`.
    pub burst: u64,
    /// Whole tokens a request could still take now (after this one, if
    /// allowed).
    pub remaining: u64,
    /// When limited, the wait until this request would fit; `None` if it
    /// is allowed, or never fits (more tokens than a full bucket).
    pub retry_after: Option<Wait>,
    /// The wait until the bucket is empty (redis-cell's TAT − now).
    pub reset_after: Wait,
}

impl Decision {
    /// redis-cell's reply, `[limited, max_burst + 1, remaining,
    /// retry_after (-1 if allowed or never), reset_after]`, its waits in
    /// `units`.
    pub fn reply(&self, units: Units) -> [i64; 5] {
        // Every number is at most MAX_EXACT, well within i64.
        [
            i64::from(self.limited),
            self.burst as i64,
            self.remaining as i64,
            self.retry_after.map_or(-1, |w| w.in_units(units) as i64),
            self.reset_after.in_units(units) as i64,
        ]
    }
}

/// What an allowed request stores: the bucket, and when the key expires
/// (when the bucket is empty again, at this charge's rate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Charge {
    pub bucket: Bucket,
    pub expires_at: Millis,
}

/// The decision on a request, and what it stores (an allowed request of
/// at least one token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    pub charge: Option<Charge>,
}

/// A request of `tokens` under `limit` against the key's bucket (`None`
/// for a key that does not exist), at clock reading `clock`. `tokens` 0
/// asks without charging.
pub fn decide(stored: Option<&Bucket>, clock: Millis, limit: &Limit, tokens: u64) -> Verdict {
    let now = decision_time(stored, clock);
    let level = stored.map_or(0, |bucket| level_at(bucket, now, limit));
    let capacity = limit.capacity();
    // An over-full bucket (a settled debt, a smaller burst) has no room.
    let room = capacity.saturating_sub(level);
    let wait = |units| Wait {
        units,
        count: limit.count,
    };
    // More tokens than a full bucket never fit. Both terms are at most
    // MAX_EXACT: no overflow.
    let need = (tokens <= limit.burst).then(|| tokens * limit.period);
    match need {
        Some(need) if level + need <= capacity => {
            let after = level + need;
            Verdict {
                decision: Decision {
                    limited: false,
                    burst: limit.burst,
                    remaining: (capacity - after) / limit.period,
                    retry_after: None,
                    reset_after: wait(after),
                },
                charge: (need > 0).then(|| stored_charge(now, limit, after)),
            }
        }
        _ => Verdict {
            decision: Decision {
                limited: true,
                burst: limit.burst,
                remaining: room / limit.period,
                retry_after: need.map(|need| wait(level + need - capacity)),
                reset_after: wait(level),
            },
            charge: None,
        },
    }
}

/// The five fields of a settlement's reply (CHARGE, REFUND), before units:
/// the bucket as the settlement left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settlement {
    /// Whole tokens held above the bucket's size, rounded up; 0 when not
    /// over.
    pub over: u64,
    /// `max_burst + 1`.
    pub burst: u64,
    /// Whole tokens a request could take now; 0 when over or full.
    pub remaining: u64,
    /// The wait until a request of 1 token fits; `None` if one fits now.
    pub retry_after: Option<Wait>,
    /// The wait until the bucket is empty.
    pub reset_after: Wait,
}

impl Settlement {
    /// `[over, max_burst + 1, remaining, retry_after (-1 if a token fits
    /// now), reset_after]`, its waits in `units`.
    pub fn reply(&self, units: Units) -> [i64; 5] {
        [
            self.over as i64,
            self.burst as i64,
            self.remaining as i64,
            self.retry_after.map_or(-1, |w| w.in_units(units) as i64),
            self.reset_after.in_units(units) as i64,
        ]
    }

    /// A bucket holding `level` units under `limit`.
    fn of(level: u64, limit: &Limit) -> Settlement {
        let capacity = limit.capacity();
        let wait = |units| Wait {
            units,
            count: limit.count,
        };
        // level + period: at most MAX_EXACT + MAX_PERIOD, no overflow.
        let token = level + limit.period;
        Settlement {
            over: level.saturating_sub(capacity).div_ceil(limit.period),
            burst: limit.burst,
            remaining: capacity.saturating_sub(level) / limit.period,
            retry_after: (token > capacity).then(|| wait(token - capacity)),
            reset_after: wait(level),
        }
    }
}

/// What a settlement writes to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// The bucket, and the key's expiry.
    Store(Charge),
    /// The bucket holds nothing: the key goes.
    Delete,
}

/// A settlement's answer, and what it writes (nothing for TOKENS 0, or a
/// refund on a key that does not exist).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled {
    pub settlement: Settlement,
    pub write: Option<Write>,
}

/// A charge that would leave the bucket holding more than [`MAX_EXACT`]
/// units (token-milliseconds): refused whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overflow;

/// CHARGE: `tokens` added to what the bucket holds at `clock` whatever it
/// holds, even past full; never limited. Refused only if the bucket would
/// hold more than [`MAX_EXACT`] units. `tokens` 0 charges nothing.
pub fn charge(
    stored: Option<&Bucket>,
    clock: Millis,
    limit: &Limit,
    tokens: u64,
) -> Result<Settled, Overflow> {
    let now = decision_time(stored, clock);
    let level = stored.map_or(0, |bucket| level_at(bucket, now, limit));
    let after = tokens
        .checked_mul(limit.period)
        .and_then(|need| level.checked_add(need))
        .filter(|&after| after <= MAX_EXACT)
        .ok_or(Overflow)?;
    Ok(Settled {
        settlement: Settlement::of(after, limit),
        write: (tokens > 0).then(|| Write::Store(stored_charge(now, limit, after))),
    })
}

/// REFUND: `tokens` taken back from what the bucket holds at `clock`, at
/// most all of it; a bucket left holding nothing is deleted. `tokens` 0,
/// or a key that does not exist, changes nothing.
pub fn refund(stored: Option<&Bucket>, clock: Millis, limit: &Limit, tokens: u64) -> Settled {
    let now = decision_time(stored, clock);
    let Some(bucket) = stored else {
        return Settled {
            settlement: Settlement::of(0, limit),
            write: None,
        };
    };
    let level = level_at(bucket, now, limit);
    let after = level.saturating_sub(tokens.saturating_mul(limit.period));
    let write = match after {
        _ if tokens == 0 => None,
        0 => Some(Write::Delete),
        _ => Some(Write::Store(stored_charge(now, limit, after))),
    };
    Settled {
        settlement: Settlement::of(after, limit),
        write,
    }
}

fn stored_charge(now: Millis, limit: &Limit, level: u64) -> Charge {
    Charge {
        bucket: Bucket::pack(now, limit.period, level),
        expires_at: now + level.div_ceil(limit.count) as Millis,
    }
}

/// The clock (within the times a bucket holds), or the last charge's time
/// if the clock reads earlier: time never runs backwards for a key, so a
/// clock stepping back frees nothing.
fn decision_time(stored: Option<&Bucket>, clock: Millis) -> Millis {
    let clock = clock.clamp(1, LATEST);
    stored.map_or(clock, |bucket| clock.max(bucket.at()))
}

/// What `bucket` holds at `now` under `limit`, in `1 / limit.period`
/// tokens: what it held after its last charge (see the module's doc for a
/// charge under other parameters), less what drained since at the limit's
/// rate. It may be more than a full bucket (a settled debt, a smaller
/// burst), never more than [`MAX_EXACT`].
fn level_at(bucket: &Bucket, now: Millis, limit: &Limit) -> u64 {
    let held = if bucket.period() == limit.period {
        bucket.level()
    } else {
        let tokens = bucket.level().div_ceil(bucket.period());
        tokens.min(MAX_EXACT / limit.period) * limit.period
    };
    let elapsed = now.abs_diff(bucket.at());
    held.saturating_sub(elapsed.saturating_mul(limit.count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::GcraOp;
    use crate::reference::gcra::{self as model, GcraCall};
    use proptest::prelude::*;

    const T0: Millis = 1_700_000_000_000;

    fn limit(max_burst: u64, count: u64, period_ms: u64) -> Limit {
        Limit::new(max_burst, count, period_ms).expect("a valid limit")
    }

    /// Applies what a call stores; returns its reply in redis-cell's units.
    fn call(key: &mut Option<Bucket>, clock: Millis, limit: &Limit, tokens: u64) -> [i64; 5] {
        let verdict = decide(key.as_ref(), clock, limit, tokens);
        if let Some(charge) = verdict.charge {
            *key = Some(charge.bucket);
        }
        verdict.decision.reply(Units::CellSeconds)
    }

    /// The example: `CL.THROTTLE user123 15 30 60` twenty times
    /// within a second.
    #[test]
    fn twenty_calls_within_a_second() {
        let per_minute = limit(15, 30, 60_000);
        for step in [0, 1, 49] {
            let mut key = None;
            for k in 1..=16 {
                let at = T0 + (k - 1) * step;
                assert_eq!(
                    call(&mut key, at, &per_minute, 1),
                    [0, 16, 16 - k, -1, 2 * k]
                );
            }
            for k in 17..=20 {
                let at = T0 + (k - 1) * step;
                assert_eq!(call(&mut key, at, &per_minute, 1), [1, 16, 0, 2, 32]);
            }
        }
    }

    #[test]
    fn waits_in_each_unit() {
        let per_minute = limit(15, 30, 60_000);
        let mut key = None;
        for _ in 0..16 {
            call(&mut key, T0, &per_minute, 1);
        }
        // 1.5 ms later: the 17th waits 1998.5 ms.
        let d = decide(key.as_ref(), T0 + 1, &per_minute, 1).decision;
        let retry = d.retry_after.expect("limited");
        assert_eq!((retry.floor_ms(), retry.ceil_ms()), (1999, 1999));
        assert_eq!(d.reply(Units::Milliseconds), [1, 16, 0, 1999, 31_999]);
        assert_eq!(d.reply(Units::Seconds), [1, 16, 0, 2, 32]);
        // 3 per second: a third of a second is 333.33 ms.
        let thirds = limit(0, 3, 1000);
        let mut key = None;
        call(&mut key, T0, &thirds, 1);
        let d = decide(key.as_ref(), T0, &thirds, 1).decision;
        assert_eq!(d.reply(Units::Milliseconds), [1, 1, 0, 334, 334]);
        assert_eq!(d.reply(Units::CellSeconds), [1, 1, 0, 1, 1]);
        // Under a millisecond left: redis-cell's rule rounds it away.
        let wait = Wait {
            units: 2_000_999,
            count: 1000,
        };
        assert_eq!(wait.in_units(Units::CellSeconds), 2);
        assert_eq!(wait.in_units(Units::Seconds), 3);
        assert_eq!(wait.in_units(Units::Milliseconds), 2001);
    }

    /// Quantity 0 asks: a fresh key answers full and stays missing.
    #[test]
    fn zero_tokens_peek_and_store_nothing() {
        let per_second = limit(5, 1, 1000);
        let fresh = decide(None, T0, &per_second, 0);
        assert_eq!(fresh.decision.reply(Units::CellSeconds), [0, 6, 6, -1, 0]);
        assert_eq!(fresh.charge, None);
        let mut key = None;
        call(&mut key, T0, &per_second, 2);
        let peek = decide(key.as_ref(), T0 + 500, &per_second, 0);
        assert_eq!(peek.charge, None);
        assert_eq!(
            peek.decision.reply(Units::Milliseconds),
            [0, 6, 4, -1, 1500]
        );
    }

    #[test]
    fn more_than_a_full_bucket_never_fits() {
        let small = limit(2, 1, 1000);
        let d = decide(None, T0, &small, 4);
        assert_eq!(d.decision.reply(Units::CellSeconds), [1, 3, 3, -1, 0]);
        assert_eq!(d.charge, None);
        assert!(
            decide(None, T0, &small, 3).charge.is_some(),
            "a full bucket fits"
        );
    }

    /// redis-cell #80 (above 1,000 per second) and #50 (sub-second
    /// emission intervals): exact at any ratio.
    #[test]
    fn any_rate_is_exact() {
        // The clock is in milliseconds: 3,000 a millisecond need a burst
        // of 3,000.
        let fast = limit(2999, 3_000_000, 1000);
        let mut key = None;
        let mut allowed = 0;
        for ms in 0..10 {
            for _ in 0..4000 {
                if call(&mut key, T0 + ms, &fast, 1)[0] == 0 {
                    allowed += 1;
                }
            }
        }
        assert_eq!(allowed, 10 * 3000);
        let thirds = limit(2, 3, 1000);
        let mut key = None;
        let mut admitted = 0;
        for ms in 0..3_000_000 {
            if decide(key.as_ref(), T0 + ms, &thirds, 1).charge.is_some() {
                call(&mut key, T0 + ms, &thirds, 1);
                admitted += 1;
            }
        }
        // A burst of 3, then 3 per second exactly: no drift in 50 minutes
        // (the last token of 9,000 drains at the 3,000,000th ms).
        assert_eq!(admitted, 3 + 8999);
        let tenth = limit(0, 1, 100);
        let mut key = None;
        call(&mut key, T0, &tenth, 1);
        assert_eq!(key.map(|b| b.level()), Some(100));
        let charge = decide(None, T0, &tenth, 1).charge.expect("allowed");
        assert_eq!(charge.expires_at, T0 + 100, "lives its 100 ms (#50)");
    }

    /// redis-cell #54: a raised rate applies at once to what was used.
    #[test]
    fn changed_parameters_keep_the_tokens_in_use() {
        let slow = limit(15, 10, 20_000);
        let mut key = None;
        for _ in 0..3 {
            call(&mut key, T0, &slow, 1);
        }
        let fast = limit(15, 1000, 20_000);
        assert_eq!(call(&mut key, T0, &fast, 1), [0, 16, 12, -1, 1]);
        // 30 ms at 1000 per 20 s drain one and a half tokens.
        assert_eq!(call(&mut key, T0 + 30, &fast, 1), [0, 16, 12, -1, 1]);
        assert_eq!(key.map(|b| b.level()), Some(70_000), "3.5 tokens");
        // A period change counts the partly drained token whole: 4 tokens
        // at 3000 per minute take 80 ms to drain, not 70.
        let per_minute = limit(15, 3000, 60_000);
        let d = decide(key.as_ref(), T0 + 30, &per_minute, 0).decision;
        assert_eq!(d.reply(Units::Milliseconds), [0, 16, 12, -1, 80]);
        // A smaller burst leaves the key over full: limited until its 3.5
        // tokens drain to 1 (2.5 tokens at 10 per 20 s: 5 s).
        let tight = limit(1, 10, 20_000);
        let d = decide(key.as_ref(), T0 + 30, &tight, 1).decision;
        assert_eq!(d.reply(Units::Milliseconds), [1, 2, 0, 5000, 7000]);
        let d = decide(key.as_ref(), T0 + 30, &tight, 0).decision;
        assert_eq!(d.reply(Units::Milliseconds), [1, 2, 0, 3000, 7000]);
    }

    /// Issue 27: reserve an estimate, then settle the actual cost past
    /// full; the debt drains at the rate and limits until it has.
    #[test]
    fn a_charge_past_full_is_a_debt_that_drains() {
        let per_second = limit(3, 1, 1000);
        let mut key = None;
        assert_eq!(call(&mut key, T0, &per_second, 2), [0, 4, 2, -1, 2]);
        let settled = charge(key.as_ref(), T0, &per_second, 5).expect("exact");
        // 7 tokens in a bucket of 4: 3 over; one more fits after 4 s.
        assert_eq!(
            settled.settlement.reply(Units::Milliseconds),
            [3, 4, 0, 4000, 7000]
        );
        let Some(Write::Store(c)) = settled.write else {
            panic!("a charge stores")
        };
        assert_eq!((c.bucket.level(), c.expires_at), (7000, T0 + 7000));
        key = Some(c.bucket);
        // Limited until 4 tokens have drained: then 1 fits.
        let d = decide(key.as_ref(), T0 + 2500, &per_second, 1).decision;
        assert_eq!(d.reply(Units::Milliseconds), [1, 4, 0, 1500, 4500]);
        let d = decide(key.as_ref(), T0 + 4000, &per_second, 1).decision;
        assert_eq!(d.reply(Units::Milliseconds), [0, 4, 0, -1, 4000]);
        // TOKENS 0 charges nothing, and answers as things stand.
        let zero = charge(key.as_ref(), T0 + 1000, &per_second, 0).expect("exact");
        assert_eq!(zero.write, None);
        assert_eq!(
            zero.settlement.reply(Units::Milliseconds),
            [2, 4, 0, 3000, 6000]
        );
        // A refund takes back what is held now, at most all of it.
        let r = refund(key.as_ref(), T0 + 1000, &per_second, 4);
        assert_eq!(r.settlement.reply(Units::Milliseconds), [0, 4, 2, -1, 2000]);
        let Some(Write::Store(c)) = r.write else {
            panic!("a refund stores what is left")
        };
        assert_eq!(
            (c.bucket.at(), c.bucket.level(), c.expires_at),
            (T0 + 1000, 2000, T0 + 3000)
        );
        let all = refund(key.as_ref(), T0 + 1000, &per_second, 100);
        assert_eq!(all.write, Some(Write::Delete));
        assert_eq!(all.settlement.reply(Units::Milliseconds), [0, 4, 4, -1, 0]);
        assert_eq!(refund(None, T0, &per_second, 1).write, None);
        assert_eq!(refund(key.as_ref(), T0, &per_second, 0).write, None);
    }

    #[test]
    fn a_charge_past_the_exact_bound_is_refused_whole() {
        let widest = limit(0, 1, MAX_PERIOD);
        let most = MAX_EXACT / MAX_PERIOD;
        let settled = charge(None, T0, &widest, most).expect("within");
        let Some(Write::Store(c)) = settled.write else {
            panic!("stored")
        };
        assert_eq!(charge(Some(&c.bucket), T0, &widest, 1), Err(Overflow));
        assert_eq!(charge(None, T0, &widest, most + 1), Err(Overflow));
        assert_eq!(
            charge(None, T0, &limit(0, 1, 1000), MAX_EXACT),
            Err(Overflow)
        );
        // Under another period, the held tokens are bounded so the level
        // stays exact.
        let short = limit(0, 1, 1);
        let d = decide(Some(&c.bucket), T0, &short, 0).decision;
        assert_eq!(d.reset_after.floor_ms(), most);
        let to_ms = limit(0, 1, 7);
        let held = charge(None, T0, &to_ms, MAX_EXACT / 7).expect("within");
        let Some(Write::Store(h)) = held.write else {
            panic!("stored")
        };
        let d = decide(Some(&h.bucket), T0, &limit(0, 1, 11), 0).decision;
        assert_eq!(d.reset_after.floor_ms(), MAX_EXACT / 11 * 11);
    }

    #[test]
    fn a_clock_stepping_back_frees_nothing() {
        let per_second = limit(0, 1, 1000);
        let mut key = None;
        call(&mut key, T0, &per_second, 1);
        let back = decide(key.as_ref(), T0 - 5000, &per_second, 1);
        assert_eq!(
            back.decision.reply(Units::Milliseconds),
            [1, 1, 0, 1000, 1000]
        );
    }

    #[test]
    fn limits_and_buckets_hold_their_bounds() {
        assert_eq!(Limit::new(0, 0, 1000), Err(LimitError::Count));
        assert_eq!(Limit::new(0, MAX_EXACT + 1, 1000), Err(LimitError::Count));
        assert_eq!(Limit::new(0, 1, 0), Err(LimitError::Period));
        assert_eq!(Limit::new(0, 1, MAX_PERIOD + 1), Err(LimitError::Period));
        assert_eq!(Limit::new(u64::MAX, 1, 1), Err(LimitError::Capacity));
        assert_eq!(
            Limit::new(MAX_EXACT / 1000, 1, 1000),
            Err(LimitError::Capacity)
        );
        assert!(Limit::new(MAX_EXACT / 1000 - 1, MAX_EXACT, 1000).is_ok());
        assert_eq!(Bucket::new(0, 1, 1), Err(BucketError::Time));
        assert_eq!(Bucket::new(LATEST + 1, 1, 1), Err(BucketError::Time));
        assert_eq!(Bucket::new(1, 0, 1), Err(BucketError::Period));
        assert_eq!(Bucket::new(1, 1, 0), Err(BucketError::Level));
        assert_eq!(Bucket::new(1, 1, MAX_EXACT + 1), Err(BucketError::Level));
        let edge = Bucket::new(LATEST, MAX_PERIOD, MAX_EXACT).expect("the largest bucket");
        assert_eq!(
            (edge.at(), edge.period(), edge.level()),
            (LATEST, MAX_PERIOD, MAX_EXACT)
        );
        // The largest limit on the largest bucket at the latest time.
        let widest = limit(MAX_EXACT / MAX_PERIOD - 1, MAX_EXACT, MAX_PERIOD);
        let d = decide(Some(&edge), Millis::MAX, &widest, 1);
        assert!(d.decision.limited);
    }

    proptest! {
        #[test]
        fn a_bucket_keeps_its_numbers(at in 1..=LATEST, period in 1..=MAX_PERIOD, level in 1..=MAX_EXACT) {
            let bucket = Bucket::new(at, period, level).expect("in range");
            prop_assert_eq!((bucket.at(), bucket.period(), bucket.level()), (at, period, level));
        }
    }

    /// Small limits, mostly fixed for a while, sometimes changed; the
    /// clock mostly moves forward and sometimes steps back.
    fn gcra_call() -> impl Strategy<Value = GcraCall> {
        (
            -300i64..2_000,
            0u64..6,
            1u64..12,
            prop_oneof![3 => Just(1000u64), 1 => 1u64..5_000],
            prop_oneof![4 => Just(1u64), 1 => 0u64..9, 1 => 0u64..40],
            prop_oneof![
                6 => Just(GcraOp::Request),
                1 => Just(GcraOp::Charge),
                1 => Just(GcraOp::Refund),
            ],
        )
            .prop_map(|(tick, max_burst, count, period, tokens, op)| GcraCall {
                tick,
                max_burst,
                count,
                period,
                tokens,
                op,
            })
    }

    /// Runs of calls under one limit, then another.
    fn gcra_calls() -> impl Strategy<Value = Vec<GcraCall>> {
        proptest::collection::vec((gcra_call(), 1usize..12), 1..12).prop_map(|runs| {
            runs.into_iter()
                .flat_map(|(template, times)| {
                    (0..times).map(move |i| GcraCall {
                        tick: if i == 0 {
                            template.tick
                        } else {
                            template.tick.rem_euclid(700)
                        },
                        ..template
                    })
                })
                .collect()
        })
    }

    /// Settlements near the exact bound: long periods, many tokens, some
    /// charges refused whole, and periods changed on a debt.
    fn big_settlements() -> impl Strategy<Value = Vec<GcraCall>> {
        let call = (
            -300i64..2_000_000,
            0u64..1000,
            1u64..5,
            prop_oneof![
                Just(MAX_PERIOD),
                Just(MAX_PERIOD - 1),
                1u64..20,
                Just(3_600_000)
            ],
            0u64..1_500_000,
            prop_oneof![
                1 => Just(GcraOp::Request),
                2 => Just(GcraOp::Charge),
                1 => Just(GcraOp::Refund),
            ],
        )
            .prop_filter_map(
                "a valid limit",
                |(tick, max_burst, count, period, tokens, op)| {
                    Limit::new(max_burst, count, period).ok()?;
                    Some(GcraCall {
                        tick,
                        max_burst,
                        count,
                        period,
                        tokens,
                        op,
                    })
                },
            );
        proptest::collection::vec(call, 1..30)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        #[test]
        fn settlements_near_the_bound_match_the_model(calls in big_settlements()) {
            let outcome = model::compare(&calls);
            prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3_000))]
        #[test]
        fn matches_the_reference_model(calls in gcra_calls()) {
            let outcome = model::compare(&calls);
            prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
        }
    }
}
