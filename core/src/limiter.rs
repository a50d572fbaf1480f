//! The sliding-window decision, in plain Rust.
//!
//! A limit allows at most `max` units of cost in any window of `window`
//! milliseconds. A request of cost `n` at time `now` fits a limit exactly
//! when the cost recorded at times `t` with `now - window < t <= now`, plus
//! `n`, is at most `max`. A request names one or more limits (10 per second
//! and 1,000 per hour) and is allowed only if it fits every one; it is then
//! recorded once, and every limit counts it. One log answers every window
//! up to the longest it keeps, so several limits on one key cost one key.
//!
//! Deciding and recording are separate steps: [`decide`] only reads the
//! log and returns the [`Write`] to apply, if any (an allowed request's
//! [`Record`], or the longer window a denied request registers); the same
//! write is what replicas and the AOF replay, so they reach the master's
//! state without deciding anything themselves.
//!
//! A request may carry `BLOCK ms`: a CHECK it makes denied by the key's
//! limits also blocks the key for `ms` (see [`crate::state`]). While a key
//! is blocked every CHECK and PEEK on it is denied, records nothing, and
//! neither extends nor restarts the block; its wait is at least the rest
//! of the block.
//!
//! Which windows a key's log keeps: the longest any CHECK on it has named,
//! allowed or denied (a read-only PEEK registers nothing). A limit counts
//! the entries the log holds; before the first CHECK that names its window,
//! entries older than the longest window registered so far may already be
//! pruned.

pub use crate::log::Record;
use crate::log::{Millis, View, MAX_COST, MAX_WINDOW, TIMES};
use crate::state::State;
use std::num::NonZeroU64;

/// The most limits one request may name.
pub const MAX_LIMITS: usize = 8;

/// At most `max` units in any window of `window` ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub window: NonZeroU64,
    pub max: NonZeroU64,
}

/// A request of `cost` units against one or more limits. Only requests
/// that could ever be allowed can be built: windows distinct and within
/// range, `cost` at most every `max`, `precision` at most every window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Shortest window first; only the first `count` are used.
    limits: [Limit; MAX_LIMITS],
    count: usize,
    cost: NonZeroU64,
    precision: NonZeroU64,
    /// How long a denial by the limits blocks the key, if at all.
    block: Option<NonZeroU64>,
}

/// The longest block: as long as the longest window.
pub const MAX_BLOCK: u64 = MAX_WINDOW;

/// A settlement (CHARGE): `cost` units recorded at the server's clock
/// whatever the limits say, and measured against them. Built as a
/// [`Request`] is (the same limits, windows and precision), but its cost
/// may be above any `max` (up to [`MAX_COST`]), and it never blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Charge {
    /// Shortest window first; only the first `count` are used.
    limits: [Limit; MAX_LIMITS],
    count: usize,
    cost: NonZeroU64,
    precision: NonZeroU64,
}

impl Charge {
    pub fn new(
        limits: &[Limit],
        cost: NonZeroU64,
        precision: NonZeroU64,
    ) -> Result<Charge, RequestError> {
        let (sorted, count) = sorted_limits(limits)?;
        if cost.get() > MAX_COST {
            return Err(RequestError::CostOutOfRange(cost.get()));
        }
        check_precision(&sorted[..count], precision)?;
        Ok(Charge {
            limits: sorted,
            count,
            cost,
            precision,
        })
    }

    /// The limits, shortest window first.
    pub fn limits(&self) -> &[Limit] {
        &self.limits[..self.count]
    }

    pub fn longest(&self) -> Limit {
        self.limits[self.count - 1]
    }

    pub fn cost(&self) -> NonZeroU64 {
        self.cost
    }

    pub fn precision(&self) -> NonZeroU64 {
        self.precision
    }
}

/// A call's limits, checked (at least one, at most [`MAX_LIMITS`], each
/// within range, no window twice) and sorted shortest window first.
fn sorted_limits(limits: &[Limit]) -> Result<([Limit; MAX_LIMITS], usize), RequestError> {
    if limits.is_empty() {
        return Err(RequestError::NoLimit);
    }
    if limits.len() > MAX_LIMITS {
        return Err(RequestError::TooManyLimits);
    }
    let mut sorted = [limits[0]; MAX_LIMITS];
    sorted[..limits.len()].copy_from_slice(limits);
    let sorted_limits = &mut sorted[..limits.len()];
    sorted_limits.sort_by_key(|limit| limit.window);
    for limit in sorted_limits.iter() {
        if limit.window.get() > MAX_WINDOW {
            return Err(RequestError::WindowOutOfRange(limit.window.get()));
        }
        if limit.max.get() > MAX_COST {
            return Err(RequestError::MaxOutOfRange(limit.max.get()));
        }
    }
    if let Some(pair) = sorted_limits
        .windows(2)
        .find(|p| p[0].window == p[1].window)
    {
        return Err(RequestError::WindowTwice(pair[0].window.get()));
    }
    Ok((sorted, limits.len()))
}

/// A precision is at most the shortest window (`sorted`'s first).
fn check_precision(sorted: &[Limit], precision: NonZeroU64) -> Result<(), RequestError> {
    let shortest = sorted[0].window;
    if precision > shortest {
        return Err(RequestError::PrecisionAboveWindow {
            precision: precision.get(),
            window: shortest.get(),
        });
    }
    Ok(())
}

/// Why a request cannot be built.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestError {
    NoLimit,
    TooManyLimits,
    WindowOutOfRange(u64),
    MaxOutOfRange(u64),
    WindowTwice(u64),
    CostAboveMax {
        cost: u64,
        max: u64,
    },
    /// A charge's cost above [`MAX_COST`].
    CostOutOfRange(u64),
    PrecisionAboveWindow {
        precision: u64,
        window: u64,
    },
    BlockOutOfRange(u64),
}

impl Request {
    pub fn new(
        limits: &[Limit],
        cost: NonZeroU64,
        precision: NonZeroU64,
    ) -> Result<Request, RequestError> {
        let (sorted, count) = sorted_limits(limits)?;
        let smallest_max = sorted[..count].iter().map(|l| l.max).min().unwrap_or(cost);
        if cost > smallest_max {
            return Err(RequestError::CostAboveMax {
                cost: cost.get(),
                max: smallest_max.get(),
            });
        }
        check_precision(&sorted[..count], precision)?;
        Ok(Request {
            limits: sorted,
            count,
            cost,
            precision,
            block: None,
        })
    }

    /// The same request, blocking the key for `ms` when its limits deny it.
    pub fn with_block(self, ms: NonZeroU64) -> Result<Request, RequestError> {
        if ms.get() > MAX_BLOCK {
            return Err(RequestError::BlockOutOfRange(ms.get()));
        }
        Ok(Request {
            block: Some(ms),
            ..self
        })
    }

    /// The limits, shortest window first.
    pub fn limits(&self) -> &[Limit] {
        &self.limits[..self.count]
    }

    pub fn longest(&self) -> Limit {
        self.limits[self.count - 1]
    }

    pub fn cost(&self) -> NonZeroU64 {
        self.cost
    }

    pub fn precision(&self) -> NonZeroU64 {
        self.precision
    }

    pub fn block(&self) -> Option<NonZeroU64> {
        self.block
    }
}

/// The four fields every CHECK and PEEK replies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The least cost still available after this call, over the limits.
    pub remaining: u64,
    /// 0 if allowed, else the wait after which the same request would fit
    /// every limit.
    pub retry_after_ms: u64,
    /// The wait until the call's longest window holds nothing of this key:
    /// newest entry + that window - now, or 0 when it holds nothing.
    pub reset_after_ms: u64,
}

/// What a CHECK changes in the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// An allowed request, recorded at the server clock, or at the newest
    /// entry's time if the clock reads earlier: time never runs backwards
    /// for a key, so a clock stepping back cannot free capacity early.
    Record(Record),
    /// A denied request whose longest window is longer than the log's:
    /// the log keeps entries for that window from now on (see
    /// [`crate::log::TimeLog::widen`]), so what the denial counted stays
    /// counted.
    Widen(NonZeroU64),
    /// A request with `BLOCK ms` denied by the key's limits while the key
    /// was not blocked: the key is blocked until `until` (the decision
    /// time plus `ms`), and keeps the longer window if `widen` names one.
    Block {
        until: Millis,
        widen: Option<NonZeroU64>,
    },
}

/// The decision on a request, and what it changes in the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    pub write: Option<Write>,
}

/// One key as a request finds it: the decision time, what its windows
/// hold, and the block in force then (if any).
struct Seen<'a> {
    view: Option<View<'a>>,
    at: Millis,
    standing: Standing,
    block: Option<Millis>,
}

impl<'a> Seen<'a> {
    fn of(state: Option<&'a State>, clock: Millis, request: &Request) -> Seen<'a> {
        let view = state.map(|s| s.log().view());
        let at = decision_time(view.as_ref(), clock);
        Seen {
            standing: Standing::of(view.as_ref(), at, request),
            block: state.and_then(|s| s.block_at(at)),
            view,
            at,
        }
    }

    /// Denied by a block in force or by the limits.
    fn denies(&self) -> bool {
        self.block.is_some() || !self.standing.fits
    }

    /// The block a CHECK with this request starts: only on a key its
    /// limits deny and that is not blocked already.
    fn starts_block(&self, request: &Request) -> Option<Millis> {
        let ms = request
            .block
            .filter(|_| self.block.is_none() && !self.standing.fits)?;
        Some(self.at.saturating_add_unsigned(ms.get()))
    }

    /// The key's answer to a denied call (as PEEK would give it), blocked
    /// until `block` if given.
    fn answer(&self, block: Option<Millis>) -> Decision {
        let limits = self.standing.decision();
        let Some(until) = block else {
            return limits;
        };
        let rest = until.abs_diff(self.at);
        Decision {
            allowed: false,
            remaining: 0,
            retry_after_ms: rest.max(limits.retry_after_ms),
            reset_after_ms: rest.max(limits.reset_after_ms),
        }
    }

    /// What a denied CHECK changes: a block it starts, and the longer
    /// window it registers.
    fn denial_write(&self, request: &Request, started: Option<Millis>) -> Option<Write> {
        let widen = widening(self.view.as_ref(), request);
        match started {
            Some(until) => Some(Write::Block { until, widen }),
            None => widen.map(Write::Widen),
        }
    }
}

/// CHECK: the verdict on `request` against the key's `state` (`None` for a
/// key that does not exist) at clock reading `clock`.
pub fn decide(state: Option<&State>, clock: Millis, request: &Request) -> Verdict {
    let seen = Seen::of(state, clock, request);
    if seen.denies() {
        let started = seen.starts_block(request);
        return Verdict {
            decision: seen.answer(seen.block.or(started)),
            write: seen.denial_write(request, started),
        };
    }
    Verdict {
        decision: Decision {
            allowed: true,
            remaining: seen.standing.remaining_after,
            retry_after_ms: 0,
            reset_after_ms: request.longest().window.get(),
        },
        write: Some(record_of(seen.at, request)),
    }
}

/// The most keys one multi-key call may name.
pub const MAX_KEYS: usize = 16;

/// The decision on a multi-key call: its four fields over every key, and
/// the keys that denied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Joint {
    pub decision: Decision,
    /// Positions (0-based, in call order) of the keys that denied, by
    /// their limits or by a block; empty when allowed.
    pub denied: Vec<usize>,
}

/// The verdict on a multi-key call, and what it changes in each key (in
/// call order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JointVerdict {
    pub joint: Joint,
    pub writes: Vec<Option<Write>>,
}

/// MCHECK: one decision over several keys, each with its own request
/// (`None` for a key that does not exist). Allowed only if no key is
/// blocked and every key's every limit allows; then each key records the
/// request, at its own decision time (the clock, or its newest entry's
/// time if later, as for CHECK). Denied: nothing is recorded anywhere,
/// each key's log keeps the key's longest window, as a denied CHECK's
/// does, and with `BLOCK ms` each key whose own limits denied and that was
/// not blocked is blocked. `remaining` is the least over every key,
/// `retry_after_ms` the wait until every key fits (each key's wait only
/// shortens as time passes, so the longest is exact), `reset_after_ms`
/// the longest.
pub fn decide_all(keys: &[(Option<&State>, &Request)], clock: Millis) -> JointVerdict {
    let seen = see_all(keys, clock);
    if !seen.iter().any(Seen::denies) {
        let decision = Decision {
            allowed: true,
            remaining: seen
                .iter()
                .map(|s| s.standing.remaining_after)
                .min()
                .unwrap_or(0),
            retry_after_ms: 0,
            reset_after_ms: keys
                .iter()
                .map(|(_, request)| request.longest().window.get())
                .max()
                .unwrap_or(0),
        };
        let writes = keys
            .iter()
            .zip(&seen)
            .map(|(&(_, request), s)| Some(record_of(s.at, request)))
            .collect();
        return JointVerdict {
            joint: Joint {
                decision,
                denied: vec![],
            },
            writes,
        };
    }
    let started: Vec<Option<Millis>> = keys
        .iter()
        .zip(&seen)
        .map(|(&(_, request), s)| s.starts_block(request))
        .collect();
    let answers = seen
        .iter()
        .zip(&started)
        .map(|(s, &new)| s.answer(s.block.or(new)));
    let writes = keys
        .iter()
        .zip(&seen)
        .zip(&started)
        .map(|((&(_, request), s), &new)| s.denial_write(request, new))
        .collect();
    JointVerdict {
        joint: denied_joint(&seen, answers),
        writes,
    }
}

/// MPEEK: whether MCHECK would allow the call; every key stays as it is.
pub fn peek_all(keys: &[(Option<&State>, &Request)], clock: Millis) -> Joint {
    let seen = see_all(keys, clock);
    if seen.iter().any(Seen::denies) {
        return denied_joint(&seen, seen.iter().map(|s| s.answer(s.block)));
    }
    // As PEEK: the windows as they stand, before the request.
    Joint {
        decision: Decision {
            allowed: true,
            remaining: seen.iter().map(|s| s.standing.remaining).min().unwrap_or(0),
            retry_after_ms: 0,
            reset_after_ms: seen
                .iter()
                .map(|s| s.standing.reset_after_ms)
                .max()
                .unwrap_or(0),
        },
        denied: vec![],
    }
}

fn see_all<'a>(keys: &[(Option<&'a State>, &Request)], clock: Millis) -> Vec<Seen<'a>> {
    keys.iter()
        .map(|&(state, request)| Seen::of(state, clock, request))
        .collect()
}

/// A denied multi-key call's decision from each key's answer: the least
/// remaining, the longest waits, and the keys that denied.
fn denied_joint(seen: &[Seen], answers: impl Iterator<Item = Decision>) -> Joint {
    let mut decision = Decision {
        allowed: false,
        remaining: u64::MAX,
        retry_after_ms: 0,
        reset_after_ms: 0,
    };
    for answer in answers {
        decision.remaining = decision.remaining.min(answer.remaining);
        decision.retry_after_ms = decision.retry_after_ms.max(answer.retry_after_ms);
        decision.reset_after_ms = decision.reset_after_ms.max(answer.reset_after_ms);
    }
    let denied = seen
        .iter()
        .enumerate()
        .filter(|(_, s)| s.denies())
        .map(|(position, _)| position)
        .collect();
    Joint { decision, denied }
}

/// What an allowed request records at `at`.
fn record_of(at: Millis, request: &Request) -> Write {
    Write::Record(Record {
        at,
        window: request.longest().window,
        cost: request.cost,
        precision: request.precision,
    })
}

/// The longer window a denied request registers: the log keeps the
/// request's longest window if it kept a shorter one (a key holding no
/// entry has no log to keep it).
fn widening(log: Option<&View>, request: &Request) -> Option<NonZeroU64> {
    let longest = request.longest().window;
    log.is_some_and(|log| !log.is_empty() && log.window < longest.get())
        .then_some(longest)
}

/// PEEK: whether CHECK would allow the request, while the key stays as it
/// is, so `remaining` and `reset_after_ms` describe the windows as they
/// stand. A blocked key is denied, as CHECK would be; PEEK never starts a
/// block.
pub fn peek(state: Option<&State>, clock: Millis, request: &Request) -> Decision {
    let seen = Seen::of(state, clock, request);
    seen.answer(seen.block)
}

/// Applies what a CHECK (or its replicated form) changes; returns when the
/// key expires.
pub fn apply(state: &mut State, write: &Write) -> Millis {
    match *write {
        Write::Record(record) => state.record(&record),
        Write::Widen(window) => state.widen(window),
        Write::Block { until, widen } => {
            if let Some(window) = widen {
                state.widen(window);
            }
            state.block(until)
        }
    }
}

/// UNDO: takes back up to `units` of the newest recorded cost; returns how
/// many went. A block stays.
pub fn refund(state: &mut State, units: NonZeroU64) -> u64 {
    state.refund(units.get())
}

/// UNBLOCK: lifts a block in force at the key's decision time for
/// `clock`; true if there was one. The entries stay and count as before.
pub fn unblock(state: &mut State, clock: Millis) -> bool {
    let at = decision_time(Some(&state.log().view()), clock);
    let blocked = state.block_at(at).is_some();
    if blocked {
        state.unblock();
    }
    blocked
}

/// What CHARGE replies: how far the key is over its limits after the
/// charge, the room left, when a request of cost 1 would fit again, and
/// when the charge's longest window holds nothing of the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settlement {
    /// The most, over the limits, of the cost in the window after this
    /// charge less `max`; 0 when no limit is over.
    pub over: u64,
    /// As an allowed CHECK's: the least, over the limits, of `max` less
    /// the cost in the window after this charge; 0 when over.
    pub remaining: u64,
    /// The wait until a request of cost 1 would fit every limit ("when it
    /// is back under"); 0 if it would now.
    pub retry_after_ms: u64,
    /// As CHECK's: the wait until the charge's longest window holds
    /// nothing of this key.
    pub reset_after_ms: u64,
}

/// What MCHARGE replies: CHARGE's fields over every key (the most over,
/// the least remaining, the longest waits) and the keys now over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JointSettlement {
    pub settlement: Settlement,
    /// Positions (0-based, in call order) of the keys whose limits the
    /// cost in their windows now exceeds; empty when none does.
    pub over: Vec<usize>,
}

/// A charge refused because a count the key would hold (an entry's cost,
/// or the cost its log keeps, which bounds every window's) would exceed
/// [`MAX_COST`], which a reply's signed 64-bit integer carries: nothing
/// is recorded, rather than a count wrapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overflow;

/// CHARGE: the record a settlement writes into the key's `state` (`None`
/// for a key that does not exist) at clock reading `clock`, whatever its
/// limits say and whether or not the key is blocked: `cost` units at the
/// key's decision time (the clock, or its newest entry's time if later),
/// under the charge's longest window. Refused if the cost the key's log
/// would keep then (every entry within the longer of its window and the
/// charge's, this charge included) exceeds [`MAX_COST`]: an entry never
/// holds more than its log, nor a window more than the log keeps.
pub fn charge(state: Option<&State>, clock: Millis, charge: &Charge) -> Result<Record, Overflow> {
    let view = state.map(|s| s.log().view());
    let at = decision_time(view.as_ref(), clock);
    let longest = charge.longest().window;
    let cost = u128::from(charge.cost.get());
    let room = u128::from(MAX_COST);
    // What the log holds now bounds what it keeps: most keys are far from
    // the bound, and only a key near it is read.
    let overflows = view.is_some_and(|view| {
        view.total + cost > room && kept(&view, at, view.window.max(longest.get())) + cost > room
    });
    if overflows || cost > room {
        return Err(Overflow);
    }
    Ok(Record {
        at,
        window: longest,
        cost: charge.cost,
        precision: charge.precision,
    })
}

/// MCHARGE: each key's record (in call order), as CHARGE on it alone would
/// write it; or the position of the first key that would overflow, and
/// then none is written.
pub fn charge_all(
    keys: &[(Option<&State>, &Charge)],
    clock: Millis,
) -> Result<Vec<Record>, (usize, Overflow)> {
    keys.iter()
        .enumerate()
        .map(|(position, &(state, c))| charge(state, clock, c).map_err(|o| (position, o)))
        .collect()
}

/// What CHARGE answers, read from the key's `state` once its record is
/// applied, at the same clock reading.
pub fn settled(state: &State, clock: Millis, charge: &Charge) -> Settlement {
    let view = state.log().view();
    let newest = view.newest();
    let at = time_after(newest, clock);
    let mut settlement = Settlement {
        over: 0,
        remaining: u64::MAX,
        retry_after_ms: 0,
        reset_after_ms: 0,
    };
    for limit in charge.limits() {
        // The cost in the window, exactly, and when a request of cost 1
        // fits it again.
        let horizon = at.saturating_sub_unsigned(limit.window.get());
        let window = match view.window <= limit.window.get() {
            true => from_the_front(&view, horizon, limit, 1),
            false => counted_from_the_back(&view, horizon, limit),
        };
        let max = u128::from(limit.max.get());
        let over = u64::try_from(window.used.saturating_sub(max)).unwrap_or(u64::MAX);
        settlement.over = settlement.over.max(over);
        settlement.remaining = settlement
            .remaining
            .min(max.saturating_sub(window.used) as u64);
        settlement.retry_after_ms = settlement.retry_after_ms.max(window.retry_after_ms);
    }
    let horizon = at.saturating_sub_unsigned(charge.longest().window.get());
    settlement.reset_after_ms = newest
        .filter(|newest| newest.at > horizon)
        .map_or(0, |newest| newest.at.abs_diff(horizon));
    settlement
}

/// What MCHARGE answers, from every key's state once its record is
/// applied: the most over, the least remaining, the longest waits (each
/// key's wait only shortens as time passes, so the longest is when every
/// key is back under), and the keys now over.
pub fn settled_all(keys: &[(&State, &Charge)], clock: Millis) -> JointSettlement {
    let each: Vec<Settlement> = keys
        .iter()
        .map(|&(state, c)| settled(state, clock, c))
        .collect();
    let mut settlement = Settlement {
        over: 0,
        remaining: u64::MAX,
        retry_after_ms: 0,
        reset_after_ms: 0,
    };
    for s in &each {
        settlement.over = settlement.over.max(s.over);
        settlement.remaining = settlement.remaining.min(s.remaining);
        settlement.retry_after_ms = settlement.retry_after_ms.max(s.retry_after_ms);
        settlement.reset_after_ms = settlement.reset_after_ms.max(s.reset_after_ms);
    }
    JointSettlement {
        settlement,
        over: (0..each.len()).filter(|&i| each[i].over > 0).collect(),
    }
}

/// The cost a log keeps at `now` under `window` (at least its own): its
/// cost sum less what has expired, read from the front.
fn kept(log: &View, now: Millis, window: u64) -> u128 {
    debug_assert!(window >= log.window);
    let horizon = now.saturating_sub_unsigned(window);
    let expired: u128 = log
        .entries()
        .take_while(|e| e.at <= horizon)
        .map(|e| u128::from(e.cost))
        .sum();
    log.total - expired
}

/// The clock (within the times a log holds), or the newest entry's time
/// if the clock reads earlier.
fn decision_time(log: Option<&View>, clock: Millis) -> Millis {
    time_after(log.and_then(View::newest), clock)
}

/// The clock (within the times a log holds), or `newest`'s time if the
/// clock reads earlier.
fn time_after(newest: Option<crate::log::Entry>, clock: Millis) -> Millis {
    let clock = clock.clamp(*TIMES.start(), *TIMES.end());
    newest.map_or(clock, |newest| clock.max(newest.at))
}

/// What the windows hold at one moment, seen by one request.
struct Standing {
    fits: bool,
    /// The least room left over the limits, before and after the request.
    remaining: u64,
    remaining_after: u64,
    retry_after_ms: u64,
    reset_after_ms: u64,
}

impl Standing {
    fn of(log: Option<&View>, now: Millis, request: &Request) -> Standing {
        let cost = u128::from(request.cost.get());
        let mut seen = Standing {
            fits: true,
            remaining: u64::MAX,
            remaining_after: u64::MAX,
            retry_after_ms: 0,
            reset_after_ms: 0,
        };
        let Some(log) = log else {
            for limit in request.limits() {
                seen.remaining = seen.remaining.min(limit.max.get());
                seen.remaining_after = seen.remaining_after.min(limit.max.get() - cost as u64);
            }
            return seen;
        };
        for limit in request.limits() {
            let window = occupancy(log, now, limit, request.cost.get());
            let max = u128::from(limit.max.get());
            let room = max.saturating_sub(window.used);
            seen.fits &= window.used + cost <= max;
            seen.remaining = seen.remaining.min(room as u64);
            seen.remaining_after = seen.remaining_after.min(room.saturating_sub(cost) as u64);
            seen.retry_after_ms = seen.retry_after_ms.max(window.retry_after_ms);
        }
        let horizon = now.saturating_sub_unsigned(request.longest().window.get());
        seen.reset_after_ms = log
            .newest()
            .filter(|newest| newest.at > horizon)
            .map_or(0, |newest| newest.at.abs_diff(horizon));
        seen
    }

    fn decision(&self) -> Decision {
        Decision {
            allowed: self.fits,
            remaining: self.remaining,
            retry_after_ms: if self.fits { 0 } else { self.retry_after_ms },
            reset_after_ms: self.reset_after_ms,
        }
    }
}

/// One limit's window at `now`.
struct Occupancy {
    /// Cost recorded within the window; or, once the window is known to
    /// be full, any amount of at least `max`.
    used: u128,
    /// 0 if the request fits, else the wait until it would.
    retry_after_ms: u64,
}

/// Reads one limit's window. The request fits once enough of the oldest
/// live cost has expired that `max - cost` or less is left: the entry
/// whose expiry gets there sets the wait.
///
/// A window as long as the log's own, whose expired entries the next
/// allowed CHECK prunes, is read from the front, against the log's cost
/// sum: only the few entries that expired since are skipped (amortised
/// O(1)), and the wait is found within the first entries that must expire.
/// A shorter window is read from the back: the entries in it, newest
/// first, no more.
fn occupancy(log: &View, now: Millis, limit: &Limit, cost: u64) -> Occupancy {
    let horizon = now.saturating_sub_unsigned(limit.window.get());
    if log.window <= limit.window.get() {
        from_the_front(log, horizon, limit, cost)
    } else {
        from_the_back(log, horizon, limit, cost)
    }
}

/// An entry at `t` (after the horizon) expires `t - horizon` ms from now.
fn expiry(t: Millis, horizon: Millis) -> u64 {
    t.abs_diff(horizon)
}

fn from_the_front(log: &View, horizon: Millis, limit: &Limit, cost: u64) -> Occupancy {
    let mut entries = log.entries().peekable();
    let mut expired = 0u128;
    while let Some(entry) = entries.next_if(|e| e.at <= horizon) {
        expired += u128::from(entry.cost);
    }
    let used = log.total - expired;
    let over = (used + u128::from(cost)).saturating_sub(u128::from(limit.max.get()));
    let mut leaving = 0u128;
    let retry_after_ms = match over {
        0 => 0,
        _ => entries
            .find(|e| {
                leaving += u128::from(e.cost);
                leaving >= over
            })
            .map_or(0, |e| expiry(e.at, horizon)),
    };
    Occupancy {
        used,
        retry_after_ms,
    }
}

/// A window shorter than the log's, read from the back whole: the cost in
/// it exactly (CHARGE's `over` needs it), and the wait until a request of
/// cost 1 fits (see [`from_the_back`], which stops once the window is
/// known to be full).
fn counted_from_the_back(log: &View, horizon: Millis, limit: &Limit) -> Occupancy {
    let room = u128::from(limit.max.get()) - 1;
    let mut used = 0u128;
    let mut last_to_leave = None;
    for entry in log.entries().rev().take_while(|e| e.at > horizon) {
        used += u128::from(entry.cost);
        if last_to_leave.is_none() && used > room {
            last_to_leave = Some(entry.at);
        }
    }
    Occupancy {
        used,
        retry_after_ms: last_to_leave.map_or(0, |t| expiry(t, horizon)),
    }
}

fn from_the_back(log: &View, horizon: Millis, limit: &Limit, cost: u64) -> Occupancy {
    let max = u128::from(limit.max.get());
    let room = max - u128::from(cost);
    let mut used = 0u128;
    let mut last_to_leave = None;
    for entry in log.entries().rev().take_while(|e| e.at > horizon) {
        used += u128::from(entry.cost);
        if last_to_leave.is_none() && used > room {
            last_to_leave = Some(entry.at);
        }
        // The answer is known: no room left, and the entry whose expiry
        // makes room found (room < max <= used). Older entries change
        // neither, so they are not read.
        if used >= max {
            debug_assert!(last_to_leave.is_some());
            break;
        }
    }
    let retry_after_ms = match used > room {
        true => last_to_leave.map_or(0, |t| expiry(t, horizon)),
        false => 0,
    };
    Occupancy {
        used,
        retry_after_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::{self, Call, MultiCall};
    use proptest::prelude::*;

    fn nz(n: u64) -> NonZeroU64 {
        NonZeroU64::new(n).expect("test values are positive")
    }

    fn request(limits: &[(u64, u64)], cost: u64) -> Request {
        let limits: Vec<Limit> = limits
            .iter()
            .map(|&(window, max)| Limit {
                window: nz(window),
                max: nz(max),
            })
            .collect();
        Request::new(&limits, nz(cost), NonZeroU64::MIN).expect("a valid request")
    }

    fn check(log: &mut State, now: Millis, r: &Request) -> Decision {
        let verdict = decide(Some(&*log).filter(|l| !l.is_empty()), now, r);
        if let Some(write) = verdict.write {
            apply(log, &write);
        }
        verdict.decision
    }

    /// Limits, costs and precisions small enough for the model's brute
    /// force; the clock mostly moves forward and sometimes steps back.
    fn call() -> impl Strategy<Value = Call> {
        let limits = proptest::collection::vec((1u64..40, 1u64..8), 1..4);
        let tick = -20i64..30;
        let precision = prop_oneof![3 => Just(1u64), 1 => 1u64..12];
        prop_oneof![
            8 => (prop::bool::weighted(0.75), tick.clone(), limits.clone(), 1u64..8, precision.clone(), block()).prop_map(
                |(check, tick, limits, cost, precision, block)| Call::Request { check, tick, limits, cost, precision, block }
            ),
            1 => (1u64..6).prop_map(Call::Undo),
            1 => Just(Call::Unblock),
            // Settlements, whose cost may be above any max.
            2 => (tick, limits, 1u64..12, precision).prop_map(
                |(tick, limits, cost, precision)| Call::Charge { tick, limits, cost, precision }
            ),
        ]
    }

    /// Mostly no block, else one a few calls long (the clock moves by up to
    /// 30 ms a call) or longer than any window.
    fn block() -> impl Strategy<Value = Option<u64>> {
        prop_oneof![2 => Just(None), 1 => (1u64..120).prop_map(Some), 1 => Just(Some(500))]
    }

    /// Several keys, each with its own limits, one cost, precision and block.
    fn multi_call() -> impl Strategy<Value = MultiCall> {
        let limits = proptest::collection::vec((1u64..40, 1u64..8), 1..3);
        let keys = proptest::collection::vec((0usize..3, limits), 1..4);
        let precision = prop_oneof![3 => Just(1u64), 1 => 1u64..12];
        prop_oneof![
            8 => (prop::bool::weighted(0.75), -10i64..30, keys.clone(), 1u64..5, precision.clone(), block()).prop_map(
                |(check, tick, keys, cost, precision, block)| MultiCall::Request { check, tick, keys, cost, precision, block }
            ),
            1 => (proptest::collection::vec(0usize..3, 1..4), 1u64..6)
                .prop_map(|(keys, units)| MultiCall::Undo { keys, units }),
            1 => (0usize..3).prop_map(MultiCall::Unblock),
            2 => (-10i64..30, keys, 1u64..9, precision).prop_map(
                |(tick, keys, cost, precision)| MultiCall::Charge { tick, keys, cost, precision }
            ),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        #[test]
        fn several_keys_match_the_reference_model(calls in proptest::collection::vec(multi_call(), 1..80)) {
            let outcome = reference::compare_multi(3, &calls);
            prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3_000))]
        #[test]
        fn matches_the_reference_model(calls in proptest::collection::vec(call(), 1..120)) {
            let outcome = reference::compare(&calls);
            prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
        }
    }

    #[test]
    fn invalid_requests_are_unrepresentable() {
        let limit = |window, max| Limit {
            window: nz(window),
            max: nz(max),
        };
        let one = NonZeroU64::MIN;
        assert_eq!(
            Request::new(&[limit(10, 3)], nz(4), one),
            Err(RequestError::CostAboveMax { cost: 4, max: 3 })
        );
        assert_eq!(
            Request::new(&[limit(10, 30), limit(5, 3)], nz(4), one),
            Err(RequestError::CostAboveMax { cost: 4, max: 3 })
        );
        assert_eq!(
            Request::new(&[limit(10, 3), limit(10, 5)], one, one),
            Err(RequestError::WindowTwice(10))
        );
        assert_eq!(
            Request::new(&[limit(10, 3), limit(100, 5)], one, nz(11)),
            Err(RequestError::PrecisionAboveWindow {
                precision: 11,
                window: 10
            })
        );
        assert_eq!(Request::new(&[], one, one), Err(RequestError::NoLimit));
        assert_eq!(
            Request::new(&[limit(10, 3); MAX_LIMITS + 1], one, one),
            Err(RequestError::TooManyLimits)
        );
    }

    #[test]
    fn missing_key_peeks_as_full_capacity() {
        let d = peek(None, 5, &request(&[(1000, 5), (100, 3)], 1));
        assert_eq!(
            d,
            Decision {
                allowed: true,
                remaining: 3,
                retry_after_ms: 0,
                reset_after_ms: 0
            }
        );
    }

    #[test]
    fn a_full_window_denies_until_its_oldest_entry_expires() {
        let mut log = State::default();
        let r = request(&[(1000, 2)], 1);
        assert!(check(&mut log, 100, &r).allowed);
        assert!(check(&mut log, 400, &r).allowed);
        assert_eq!(
            check(&mut log, 500, &r),
            Decision {
                allowed: false,
                remaining: 0,
                retry_after_ms: 600,
                reset_after_ms: 900
            }
        );
        assert!(!check(&mut log, 1099, &r).allowed);
        assert!(check(&mut log, 1100, &r).allowed);
    }

    #[test]
    fn burst_and_sustained_limits_are_decided_together() {
        let mut log = State::default();
        let r = request(&[(1000, 2), (10_000, 3)], 1);
        assert!(check(&mut log, 1000, &r).allowed);
        assert!(check(&mut log, 1010, &r).allowed);
        let burst = check(&mut log, 1020, &r);
        assert_eq!(
            (burst.allowed, burst.remaining, burst.retry_after_ms),
            (false, 0, 980)
        );
        assert!(check(&mut log, 2000, &r).allowed);
        // The burst window has room again, the sustained one does not: the
        // wait is until the sustained window's oldest entry expires.
        let sustained = check(&mut log, 3000, &r);
        assert_eq!(
            sustained,
            Decision {
                allowed: false,
                remaining: 0,
                retry_after_ms: 8000,
                reset_after_ms: 9000
            }
        );
        assert_eq!(log.log().total(), 3, "denied requests record nothing");
    }

    #[test]
    fn a_short_window_does_not_prune_what_a_long_limit_counts() {
        let mut log = State::default();
        let hourly = request(&[(3_600_000, 5)], 1);
        let fast = request(&[(1000, 100)], 1);
        for t in 0..5 {
            assert!(check(&mut log, t, &hourly).allowed);
        }
        for t in 0..50 {
            assert!(check(&mut log, 10_000 + t * 100, &fast).allowed);
        }
        assert!(!check(&mut log, 20_000, &hourly).allowed);
    }

    #[test]
    fn a_weighted_request_costs_one_entry() {
        let mut log = State::default();
        let tokens = request(&[(60_000, 10_000_000)], 2_500);
        for t in 0..4000 {
            assert!(check(&mut log, t * 3, &tokens).allowed);
        }
        let full = check(&mut log, 12_000, &tokens);
        assert_eq!((full.allowed, full.remaining), (false, 0));
        assert_eq!(log.log().len(), 4000);
        assert!(log.log().encode().entries.len() <= 4 * 4000);
    }

    /// Issue 19, finding 1: ten under a 1 s limit, then a 1 h limit denies
    /// them; a second later the hour must still count all ten.
    #[test]
    fn a_denied_longer_window_keeps_what_it_counted() {
        let mut log = State::default();
        for t in 0..10 {
            assert!(check(&mut log, 1_000 + t, &request(&[(1000, 10)], 1)).allowed);
        }
        let hourly = request(&[(3_600_000, 10)], 1);
        let denied = decide(Some(&log), 1_010, &hourly);
        assert_eq!(denied.write, Some(Write::Widen(nz(3_600_000))));
        assert_eq!(
            apply(&mut log, &denied.write.expect("a widening")),
            1_009 + 3_600_000
        );
        assert_eq!(check(&mut log, 2_100, &hourly).remaining, 0);
        assert!(!check(&mut log, 2_200, &hourly).allowed);
        assert_eq!(log.log().len(), 10);
        // Denied again under a window the log already keeps: no write.
        assert_eq!(decide(Some(&log), 2_300, &hourly).write, None);
    }

    #[test]
    fn one_denying_key_charges_no_key() {
        let (mut user, mut ip) = (State::default(), State::default());
        let (per_user, per_ip, per_tenant) = (
            request(&[(1000, 2)], 1),
            request(&[(1000, 5), (60_000, 9)], 1),
            request(&[(60_000, 100)], 1),
        );
        let call = |user: &State, ip: &State, now| {
            let keys = [
                (Some(user).filter(|l| !l.is_empty()), &per_user),
                (Some(ip).filter(|l| !l.is_empty()), &per_ip),
                (None, &per_tenant),
            ];
            decide_all(&keys, now)
        };
        for now in [10, 20] {
            let verdict = call(&user, &ip, now);
            assert_eq!(
                verdict.joint,
                Joint {
                    decision: Decision {
                        allowed: true,
                        remaining: if now == 10 { 1 } else { 0 },
                        retry_after_ms: 0,
                        reset_after_ms: 60_000
                    },
                    denied: vec![]
                }
            );
            for (log, write) in [&mut user, &mut ip].into_iter().zip(&verdict.writes) {
                apply(log, &write.expect("every key records"));
            }
        }
        let denied = call(&user, &ip, 30);
        assert_eq!(denied.joint.denied, [0]);
        assert_eq!(
            denied.joint.decision,
            Decision {
                allowed: false,
                remaining: 0,
                retry_after_ms: 980,
                reset_after_ms: 59_990
            }
        );
        assert_eq!(
            denied.writes,
            [None, None, None],
            "nothing recorded anywhere"
        );
        assert!(peek_all(&[(Some(&user), &per_user)], 1010).decision.allowed);
    }

    /// Issue 18: 5 failed logins in 15 minutes, then locked out for an hour.
    #[test]
    fn a_login_lockout_outlasts_its_window_and_unblock_keeps_the_history() {
        let mut state = State::default();
        let login = request(&[(900_000, 5)], 1)
            .with_block(nz(3_600_000))
            .expect("a valid block");
        for t in 0..5 {
            assert!(check(&mut state, 1_000 + t, &login).allowed);
        }
        let sixth = decide(Some(&state), 2_000, &login);
        assert_eq!(
            sixth.write,
            Some(Write::Block {
                until: 3_602_000,
                widen: None
            })
        );
        assert_eq!(
            sixth.decision,
            Decision {
                allowed: false,
                remaining: 0,
                retry_after_ms: 3_600_000,
                reset_after_ms: 3_600_000
            }
        );
        assert_eq!(apply(&mut state, &sixth.write.unwrap()), 3_602_000);
        // Blocked: denied long after the window emptied, not extended.
        let later = decide(Some(&state), 1_000_000, &login);
        assert_eq!(later.decision.retry_after_ms, 2_602_000);
        assert_eq!(later.write, None, "a blocked denial writes nothing");
        assert!(!peek(Some(&state), 1_000_000, &request(&[(10, 5)], 1)).allowed);
        // Lifted: the history counts again.
        assert!(unblock(&mut state, 3_000));
        assert!(!unblock(&mut state, 3_000));
        let after = decide(Some(&state), 3_000, &request(&[(900_000, 5)], 1));
        assert_eq!((after.decision.allowed, after.write), (false, None));
        assert_eq!(after.decision.retry_after_ms, 898_000);
    }

    #[test]
    fn a_multi_key_block_falls_on_the_keys_whose_limits_denied() {
        let (mut user, ip) = (State::default(), State::default());
        let tight = request(&[(1000, 1)], 1);
        assert!(check(&mut user, 10, &tight).allowed);
        let blocking = |r: Request| r.with_block(nz(5_000)).expect("a valid block");
        let (per_user, per_ip) = (blocking(tight), blocking(request(&[(1000, 9)], 1)));
        let verdict = decide_all(&[(Some(&user), &per_user), (None, &per_ip)], 20);
        assert_eq!(verdict.joint.denied, [0]);
        assert_eq!(verdict.joint.decision.retry_after_ms, 5_000);
        assert_eq!(
            verdict.writes,
            [
                Some(Write::Block {
                    until: 5_020,
                    widen: None
                }),
                None
            ]
        );
        apply(&mut user, &verdict.writes[0].unwrap());
        // The user key is blocked now, and denies whatever its limits say.
        let roomy = blocking(request(&[(10, 9)], 1));
        let again = decide_all(&[(Some(&user), &roomy), (Some(&ip), &per_ip)], 3_000);
        assert_eq!(again.joint.denied, [0]);
        assert_eq!(again.writes, [None, None], "the block is not restarted");
        assert!(ip.is_empty());
        assert!(peek_all(&[(Some(&user), &roomy)], 5_020).decision.allowed);
    }

    fn charge_of(limits: &[(u64, u64)], cost: u64) -> Charge {
        let limits: Vec<Limit> = limits
            .iter()
            .map(|&(window, max)| Limit {
                window: nz(window),
                max: nz(max),
            })
            .collect();
        Charge::new(&limits, nz(cost), NonZeroU64::MIN).expect("a valid charge")
    }

    fn settle(state: &mut State, now: Millis, c: &Charge) -> Result<Settlement, Overflow> {
        let record = charge(Some(&*state).filter(|s| !s.is_empty()), now, c)?;
        apply(state, &Write::Record(record));
        Ok(settled(state, now, c))
    }

    /// Issue 27: a 10,000-token-a-minute budget; a request reserves its
    /// estimate, and settles the actual cost after the response. A
    /// settlement past the estimate is recorded even over the limit, and
    /// the next requests are denied until the window drains.
    #[test]
    fn a_settlement_is_recorded_over_the_limit_and_denies_until_it_drains() {
        let mut state = State::default();
        let budget = [(60_000, 10_000)];
        let reserve = request(&budget, 4_000);
        assert!(check(&mut state, 1_000, &reserve).allowed);
        assert!(check(&mut state, 2_000, &reserve).allowed);
        // The first response cost 7,000: 3,000 more than reserved.
        let settled = settle(&mut state, 3_000, &charge_of(&budget, 3_000)).unwrap();
        assert_eq!(
            settled,
            Settlement {
                over: 1_000,
                remaining: 0,
                retry_after_ms: 58_000,
                reset_after_ms: 60_000
            }
        );
        assert_eq!(log_total(&state), 11_000);
        let denied = check(&mut state, 4_000, &request(&budget, 1));
        assert_eq!((denied.allowed, denied.retry_after_ms), (false, 57_000));
        // Once the first reservation leaves the window, 4,000 of 11,000 go.
        assert!(check(&mut state, 61_000, &request(&budget, 1)).allowed);
        // A settlement below the estimate refunds with UNDO instead.
        assert_eq!(refund(&mut state, nz(1)), 1);
        assert_eq!(log_total(&state), 7_000);
    }

    fn log_total(state: &State) -> u128 {
        state.log().total()
    }

    #[test]
    fn a_charge_ignores_a_block_and_keeps_it() {
        let mut state = State::default();
        let login = request(&[(1000, 1)], 1)
            .with_block(nz(10_000))
            .expect("a valid block");
        assert!(check(&mut state, 100, &login).allowed);
        assert!(!check(&mut state, 200, &login).allowed);
        assert_eq!(state.blocked_until(), Some(10_200));
        let settled = settle(&mut state, 300, &charge_of(&[(1000, 1)], 2)).unwrap();
        assert_eq!((settled.over, settled.retry_after_ms), (2, 1000));
        assert_eq!(state.blocked_until(), Some(10_200), "the block stays");
        assert_eq!(log_total(&state), 3);
    }

    #[test]
    fn a_charge_that_would_hold_more_than_a_reply_counts_is_refused() {
        let mut state = State::default();
        let minute = [(60_000, MAX_COST)];
        assert!(settle(&mut state, 1, &charge_of(&minute, MAX_COST - 1)).is_ok());
        let before = state.clone();
        assert_eq!(settle(&mut state, 2, &charge_of(&minute, 2)), Err(Overflow));
        assert_eq!(state, before, "nothing recorded");
        // A short window does not hide what the log keeps.
        assert_eq!(
            settle(&mut state, 5_000, &charge_of(&[(10, 5)], 2)),
            Err(Overflow)
        );
        let full = settle(&mut state, 2, &charge_of(&minute, 1)).unwrap();
        assert_eq!((full.over, full.remaining), (0, 0));
        // Once the minute has left, the key counts from nothing.
        assert!(settle(&mut state, 60_002, &charge_of(&minute, MAX_COST)).is_ok());
        // Several keys: the first that would overflow, and nothing written.
        let keys = [
            (Some(&state), &charge_of(&minute, 1)),
            (None, &charge_of(&minute, 1)),
        ];
        assert_eq!(charge_all(&keys, 60_003), Err((0, Overflow)));
    }

    #[test]
    fn a_charge_answers_for_every_window_and_a_request_of_one() {
        let mut state = State::default();
        let limits = [(1000, 5), (10_000, 8)];
        assert_eq!(
            settle(&mut state, 1_000, &charge_of(&limits, 4)).unwrap(),
            Settlement {
                over: 0,
                remaining: 1,
                retry_after_ms: 0,
                reset_after_ms: 10_000
            }
        );
        // 9 in the second (4 over its 5), 9 in ten seconds (1 over 8): a
        // request of 1 fits the second once the 5 leave (at 2,500), and
        // ten seconds once the 4 do (at 11,000).
        let over = settle(&mut state, 1_500, &charge_of(&limits, 5)).unwrap();
        assert_eq!(
            over,
            Settlement {
                over: 4,
                remaining: 0,
                retry_after_ms: 9_500,
                reset_after_ms: 10_000
            }
        );
    }

    #[test]
    fn a_clock_stepping_back_frees_nothing() {
        let mut log = State::default();
        let r = request(&[(100, 1)], 1);
        assert!(check(&mut log, 10_000, &r).allowed);
        let back = decide(Some(&log), 5_000, &r);
        assert_eq!(back.decision.retry_after_ms, 100);
        assert_eq!(back.write, None);
    }
}
