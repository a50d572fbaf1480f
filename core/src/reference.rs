//! The log's and the limiter's rules written the slow, obvious way over a
//! plain list of entries, and a driver that runs the same calls against it
//! and the real core. The one model behind the log's property test, the
//! limiter's, and the differential fuzz target. The token bucket's model
//! is in `gcra`.

pub mod gcra;

use crate::limiter::{self, Charge, Decision, Joint, JointSettlement, Limit, Request, Settlement};
use crate::log::{Entry, Millis, MAX_COST};
use crate::state::State;
use std::num::NonZeroU64;

#[derive(Clone, Default)]
pub struct Model {
    entries: Vec<Entry>,
    /// The longest window any CHECK named (0 once the log is emptied).
    window: u64,
    /// When the key's block ends (0: never blocked, or lifted).
    blocked_until: Millis,
}

/// One call's limits as plain numbers: (window, max) pairs, a cost, and
/// the block a denial starts.
struct Plain<'a> {
    limits: &'a [(u64, u64)],
    cost: u64,
    block: Option<u64>,
}

impl Model {
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn window(&self) -> u64 {
        self.window
    }

    /// The log's `record`: the window grows, what expired under it goes,
    /// and the units join the newest entry if it is in the same precision
    /// cell and the sum fits, else become a new one. Returns the expiry.
    pub fn record(&mut self, at: Millis, window: u64, cost: u64, precision: u64) -> Millis {
        let at = self.entries.iter().map(|e| e.at).fold(at, Millis::max);
        self.window = self.window.max(window);
        let horizon = at - self.window as i64;
        self.entries.retain(|e| e.at > horizon);
        let cell = |t: Millis| t.div_euclid(precision as i64);
        match self.entries.last_mut() {
            Some(newest)
                if cell(newest.at) == cell(at)
                    && newest.cost.checked_add(cost).is_some_and(|c| c <= MAX_COST) =>
            {
                newest.at = at;
                newest.cost += cost;
            }
            _ => self.entries.push(Entry { at, cost }),
        }
        at + self.window as i64
    }

    /// The log's `refund`: units leave from the newest entries.
    pub fn refund(&mut self, units: u64) -> u64 {
        let mut removed = 0;
        while removed < units {
            let Some(newest) = self.entries.last_mut() else {
                break;
            };
            let taken = newest.cost.min(units - removed);
            newest.cost -= taken;
            removed += taken;
            if newest.cost == 0 {
                self.entries.pop();
            }
        }
        // What is left of the newest entry shares a millisecond with the
        // one before only while their costs could not share an entry.
        if let [.., previous, newest] = self.entries[..] {
            let fits = previous
                .cost
                .checked_add(newest.cost)
                .is_some_and(|c| c <= MAX_COST);
            if previous.at == newest.at && fits {
                self.entries.pop();
                if let Some(last) = self.entries.last_mut() {
                    last.cost += newest.cost;
                }
            }
        }
        // An emptied log keeps no window (and, unblocked, is a deleted key).
        if self.entries.is_empty() {
            self.window = 0;
        }
        removed
    }

    /// True while the key exists: it holds an entry or a block (ended or
    /// not: a key whose block ended expires, which the drivers leave out).
    fn exists(&self) -> bool {
        !self.entries.is_empty() || self.blocked_until != 0
    }

    fn blocked_at(&self, now: Millis) -> bool {
        now < self.blocked_until
    }

    /// A denied key's answer while blocked until `until`.
    fn blocked(&self, now: Millis, call: &Plain, until: Millis) -> Decision {
        let limits = self.peek_limits(now, call);
        let rest = (until - now) as u64;
        Decision {
            allowed: false,
            remaining: 0,
            retry_after_ms: rest.max(limits.retry_after_ms),
            reset_after_ms: rest.max(limits.reset_after_ms),
        }
    }

    /// UNBLOCK: lifts a block in force now.
    pub fn unblock(&mut self, clock: Millis) -> bool {
        let blocked = self.blocked_at(self.now(clock));
        if blocked {
            self.blocked_until = 0;
        }
        blocked
    }

    fn now(&self, clock: Millis) -> Millis {
        self.entries
            .iter()
            .map(|e| e.at)
            .fold(clock.max(1), Millis::max)
    }

    fn used_at(&self, now: Millis, window: u64) -> u128 {
        let live = |e: &&Entry| now - (window as i64) < e.at && e.at <= now;
        self.entries
            .iter()
            .filter(live)
            .map(|e| u128::from(e.cost))
            .sum()
    }

    fn fits_at(&self, now: Millis, call: &Plain) -> bool {
        call.limits.iter().all(|&(window, max)| {
            self.used_at(now, window) + u128::from(call.cost) <= u128::from(max)
        })
    }

    fn longest(call: &Plain) -> u64 {
        call.limits
            .iter()
            .map(|&(window, _)| window)
            .max()
            .unwrap_or(0)
    }

    /// The moments after `now` at which something leaves a window: an
    /// entry's time plus one of `windows`; what a window holds changes
    /// only then, so the waits below need look at no other.
    fn leaving(&self, now: Millis, windows: impl Iterator<Item = u64> + Clone) -> Vec<u64> {
        let mut moments: Vec<u64> = self
            .entries
            .iter()
            .flat_map(|e| windows.clone().map(move |w| e.at + w as Millis - now))
            .filter(|&d| d > 0)
            .map(|d| d as u64)
            .collect();
        moments.push(0);
        moments.sort_unstable();
        moments
    }

    /// The smallest wait after which the request fits.
    fn retry_after(&self, now: Millis, call: &Plain) -> u64 {
        self.leaving(now, call.limits.iter().map(|&(w, _)| w))
            .into_iter()
            .find(|&d| self.fits_at(now + d as i64, call))
            .unwrap_or(u64::MAX)
    }

    /// The smallest wait after which `window` holds nothing.
    fn reset_after(&self, now: Millis, window: u64) -> u64 {
        self.leaving(now, std::iter::once(window))
            .into_iter()
            .find(|&d| self.used_at(now + d as i64, window) == 0)
            .unwrap_or(u64::MAX)
    }

    fn remaining(&self, now: Millis, call: &Plain) -> u64 {
        call.limits
            .iter()
            .map(|&(window, max)| u128::from(max).saturating_sub(self.used_at(now, window)) as u64)
            .min()
            .unwrap_or(0)
    }

    /// PEEK: a blocked key is denied; else the limits decide.
    fn peek(&self, clock: Millis, call: &Plain) -> Decision {
        let now = self.now(clock);
        match self.blocked_at(now) {
            true => self.blocked(now, call, self.blocked_until),
            false => self.peek_limits(now, call),
        }
    }

    /// What the limits alone say at `now`.
    fn peek_limits(&self, now: Millis, call: &Plain) -> Decision {
        let allowed = self.fits_at(now, call);
        Decision {
            allowed,
            remaining: self.remaining(now, call),
            retry_after_ms: if allowed {
                0
            } else {
                self.retry_after(now, call)
            },
            reset_after_ms: self.reset_after(now, Self::longest(call)),
        }
    }

    /// A denied CHECK registers its longest window, and with BLOCK blocks
    /// a key its limits denied; an allowed one records (clearing a block
    /// that ended).
    fn check(&mut self, clock: Millis, call: &Plain, precision: u64) -> Decision {
        let now = self.now(clock);
        let standing = self.peek(clock, call);
        if !standing.allowed {
            self.register(call);
            return match call.block {
                Some(ms) if !self.blocked_at(now) => {
                    self.blocked_until = now + ms as i64;
                    self.blocked(now, call, self.blocked_until)
                }
                _ => standing,
            };
        }
        self.record(now, Self::longest(call), call.cost, precision);
        if self.blocked_until <= now {
            self.blocked_until = 0;
        }
        Decision {
            allowed: true,
            remaining: self.remaining(now, call),
            retry_after_ms: 0,
            reset_after_ms: self.reset_after(now, Self::longest(call)),
        }
    }
}

impl Model {
    /// CHARGE's refusal, the obvious way: the cost the log would keep
    /// after recording `call.cost` at `now` (every entry inside the longer
    /// of its window and the call's longest, and the charge) above
    /// [`MAX_COST`].
    fn overflows(&self, clock: Millis, call: &Plain) -> bool {
        let now = self.now(clock);
        let window = self.window.max(Self::longest(call));
        let kept: u128 = self
            .entries
            .iter()
            .filter(|e| e.at > now - window as Millis)
            .map(|e| u128::from(e.cost))
            .sum();
        kept + u128::from(call.cost) > u128::from(MAX_COST)
    }

    /// CHARGE: records the cost whatever the limits and any block say
    /// (an ended block goes, as any record clears it), then measures the
    /// windows: how far over, the room left, when a request of cost 1
    /// fits again, when the longest window empties. `None`, changing
    /// nothing, if it would overflow.
    fn charge(&mut self, clock: Millis, call: &Plain, precision: u64) -> Option<Settlement> {
        if self.overflows(clock, call) {
            return None;
        }
        let now = self.now(clock);
        self.record(now, Self::longest(call), call.cost, precision);
        if self.blocked_until <= now {
            self.blocked_until = 0;
        }
        let over = call
            .limits
            .iter()
            .map(|&(window, max)| self.used_at(now, window).saturating_sub(u128::from(max)) as u64)
            .max()
            .unwrap_or(0);
        let one = Plain {
            limits: call.limits,
            cost: 1,
            block: None,
        };
        Some(Settlement {
            over,
            remaining: self.remaining(now, call),
            retry_after_ms: self.retry_after(now, &one),
            reset_after_ms: self.reset_after(now, Self::longest(call)),
        })
    }
}

/// MCHARGE over `models`, the obvious way: refused (the first key that
/// would overflow, nothing changed) if any key would overflow; else CHARGE
/// on every key, and the most over, the least remaining, the longest
/// waits and the keys over.
fn joint_charge(
    models: &mut [&mut Model],
    clock: Millis,
    calls: &[Plain],
    precision: u64,
) -> Result<JointSettlement, usize> {
    if let Some(first) = (0..models.len()).find(|&i| models[i].overflows(clock, &calls[i])) {
        return Err(first);
    }
    let each: Vec<Settlement> = models
        .iter_mut()
        .zip(calls)
        .map(|(m, c)| m.charge(clock, c, precision).expect("checked"))
        .collect();
    Ok(JointSettlement {
        settlement: Settlement {
            over: each.iter().map(|s| s.over).max().unwrap_or(0),
            remaining: each.iter().map(|s| s.remaining).min().unwrap_or(0),
            retry_after_ms: each.iter().map(|s| s.retry_after_ms).max().unwrap_or(0),
            reset_after_ms: each.iter().map(|s| s.reset_after_ms).max().unwrap_or(0),
        },
        over: (0..each.len()).filter(|&i| each[i].over > 0).collect(),
    })
}

impl Model {
    /// A denied CHECK's window, on a log that holds entries (a key that
    /// does not exist has no log to keep it).
    fn register(&mut self, call: &Plain) {
        if !self.entries.is_empty() {
            self.window = self.window.max(Self::longest(call));
        }
    }
}

/// MCHECK (or MPEEK when `check` is false) over `models`, the obvious way:
/// every key peeks; allowed only if every key allows, and then every key
/// checks; denied, every key registers its window.
fn joint(
    models: &mut [&mut Model],
    clock: Millis,
    calls: &[Plain],
    precision: u64,
    check: bool,
) -> Joint {
    let peeks: Vec<Decision> = models
        .iter()
        .zip(calls)
        .map(|(m, c)| m.peek(clock, c))
        .collect();
    let denied: Vec<usize> = (0..peeks.len()).filter(|&i| !peeks[i].allowed).collect();
    let each: Vec<Decision> = if denied.is_empty() && check {
        models
            .iter_mut()
            .zip(calls)
            .map(|(m, c)| m.check(clock, c, precision))
            .collect()
    } else if check {
        // Denied: every key registers its window and records nothing; a
        // key that denied answers as CHECK on it alone would (blocked by
        // BLOCK if its own limits denied), the others as PEEK.
        models
            .iter_mut()
            .zip(calls)
            .zip(peeks)
            .map(|((m, c), peek)| match peek.allowed {
                true => {
                    m.register(c);
                    peek
                }
                false => m.check(clock, c, precision),
            })
            .collect()
    } else {
        peeks
    };
    let remaining = each.iter().map(|d| d.remaining).min().unwrap_or(0);
    let retry_after_ms = each.iter().map(|d| d.retry_after_ms).max().unwrap_or(0);
    let reset_after_ms = each.iter().map(|d| d.reset_after_ms).max().unwrap_or(0);
    Joint {
        decision: Decision {
            allowed: denied.is_empty(),
            remaining,
            retry_after_ms: if denied.is_empty() { 0 } else { retry_after_ms },
            reset_after_ms,
        },
        denied,
    }
}

/// One multi-key call over a few keys, named by index: each key's (window,
/// max) pairs, one cost, precision and block for all.
#[derive(Clone, Debug)]
pub enum MultiCall {
    Request {
        check: bool,
        tick: i64,
        keys: Vec<(usize, Vec<(u64, u64)>)>,
        cost: u64,
        precision: u64,
        block: Option<u64>,
    },
    /// MCHARGE: each key's (window, max) pairs, one cost and precision.
    Charge {
        tick: i64,
        keys: Vec<(usize, Vec<(u64, u64)>)>,
        cost: u64,
        precision: u64,
    },
    /// MUNDO: `units` from each key named.
    Undo { keys: Vec<usize>, units: u64 },
    /// UNBLOCK on one key.
    Unblock(usize),
}

/// Runs multi-key `calls` over `count` keys against the core and the model
/// and describes the first difference. Calls no command could pass (as
/// for `compare`, or naming a key twice) are skipped.
pub fn compare_multi(count: usize, calls: &[MultiCall]) -> Result<(), String> {
    let mut states: Vec<State> = (0..count).map(|_| State::default()).collect();
    let mut models: Vec<Model> = (0..count).map(|_| Model::default()).collect();
    let mut clock: Millis = 1_000;
    for (index, call) in calls.iter().enumerate() {
        let fail = |what: String| Err(format!("call {index} {call:?}: {what}"));
        match call {
            MultiCall::Request {
                check,
                tick,
                keys,
                cost,
                precision,
                block,
            } => {
                clock += tick;
                let named: Vec<usize> = keys.iter().map(|(k, _)| *k).collect();
                let requests: Option<Vec<Request>> = keys
                    .iter()
                    .map(|(_, limits)| request(limits, *cost, *precision, *block))
                    .collect();
                let (Some(requests), false) = (requests, has_duplicates(&named)) else {
                    continue;
                };
                let plain: Vec<Plain> = keys
                    .iter()
                    .map(|(_, limits)| Plain {
                        limits,
                        cost: *cost,
                        block: *block,
                    })
                    .collect();
                let stored: Vec<(Option<&State>, &Request)> = named
                    .iter()
                    .zip(&requests)
                    .map(|(&k, r)| (existing(&states[k]), r))
                    .collect();
                let core = if *check {
                    let verdict = limiter::decide_all(&stored, clock);
                    for (&k, write) in named.iter().zip(&verdict.writes) {
                        if let Some(write) = write {
                            limiter::apply(&mut states[k], write);
                        }
                    }
                    verdict.joint
                } else {
                    limiter::peek_all(&stored, clock)
                };
                let mut chosen = pick(&mut models, &named);
                let expected = joint(&mut chosen, clock, &plain, *precision, *check);
                if core != expected {
                    return fail(format!("core {core:?}, model {expected:?}"));
                }
            }
            MultiCall::Charge {
                tick,
                keys,
                cost,
                precision,
            } => {
                clock += tick;
                let named: Vec<usize> = keys.iter().map(|(k, _)| *k).collect();
                let charges: Option<Vec<Charge>> = keys
                    .iter()
                    .map(|(_, limits)| charge_of(limits, *cost, *precision))
                    .collect();
                let (Some(charges), false) = (charges, has_duplicates(&named)) else {
                    continue;
                };
                let stored: Vec<(Option<&State>, &Charge)> = named
                    .iter()
                    .zip(&charges)
                    .map(|(&k, c)| (existing(&states[k]), c))
                    .collect();
                let core = limiter::charge_all(&stored, clock).map(|records| {
                    for (&k, record) in named.iter().zip(&records) {
                        limiter::apply(&mut states[k], &limiter::Write::Record(*record));
                    }
                    let after: Vec<(&State, &Charge)> =
                        named.iter().map(|&k| &states[k]).zip(&charges).collect();
                    limiter::settled_all(&after, clock)
                });
                let plain: Vec<Plain> = keys
                    .iter()
                    .map(|(_, limits)| Plain {
                        limits,
                        cost: *cost,
                        block: None,
                    })
                    .collect();
                let mut chosen = pick(&mut models, &named);
                let expected = joint_charge(&mut chosen, clock, &plain, *precision);
                if core.as_ref().map_err(|e| e.0) != expected.as_ref().map_err(|&e| e) {
                    return fail(format!("core {core:?}, model {expected:?}"));
                }
            }
            MultiCall::Undo { keys, units } => {
                let Some(units) = NonZeroU64::new(*units).filter(|_| !has_duplicates(keys)) else {
                    continue;
                };
                for &k in keys {
                    let (got, want) = (
                        limiter::refund(&mut states[k], units),
                        models[k].refund(units.get()),
                    );
                    if got != want {
                        return fail(format!("key {k} refunded {got}, model {want}"));
                    }
                }
            }
            MultiCall::Unblock(k) => {
                let (got, want) = (
                    limiter::unblock(&mut states[*k], clock),
                    models[*k].unblock(clock),
                );
                if got != want {
                    return fail(format!("key {k} unblocked {got}, model {want}"));
                }
            }
        }
        for (k, (state, model)) in states.iter().zip(&models).enumerate() {
            if let Err(error) = same(state, model) {
                return fail(format!("key {k}: {error}"));
            }
        }
    }
    Ok(())
}

/// The key's state as a command finds it: `None` when it holds nothing.
fn existing(state: &State) -> Option<&State> {
    Some(state).filter(|s| !s.is_empty())
}

/// Whether the core's state is the model's: entries, window, block; and
/// whether it is one the loader accepts, and loads back as it was, after
/// any mix of records, widening denials, blocks, refunds, precision cells
/// and clock steps: an RDB, DUMP or replica always takes it.
fn same(state: &State, model: &Model) -> Result<(), String> {
    let log = state.log();
    if !log.view().entries().eq(model.entries.iter().copied()) {
        return Err("logs differ".into());
    }
    if !log.is_empty() && log.window() != model.window {
        return Err("windows differ".into());
    }
    if state.blocked_until().unwrap_or(0) != model.blocked_until {
        return Err(format!(
            "blocked until {:?}, model {}",
            state.blocked_until(),
            model.blocked_until
        ));
    }
    if state.is_empty() == model.exists() {
        return Err("one key exists, the other does not".into());
    }
    if state.is_empty() {
        return Ok(());
    }
    let (stored, blocked_until) = state.encode();
    match State::decode(&stored, blocked_until) {
        Ok(loaded) if loaded == *state => Ok(()),
        Ok(_) => Err("the state loads back changed".into()),
        Err(error) => Err(format!("the loader refuses the state: {error:?}")),
    }
}

fn has_duplicates(keys: &[usize]) -> bool {
    keys.iter().enumerate().any(|(i, k)| keys[..i].contains(k))
}

/// The models named by `keys` (distinct), in that order.
fn pick<'m>(models: &'m mut [Model], keys: &[usize]) -> Vec<&'m mut Model> {
    let mut slots: Vec<Option<&'m mut Model>> = models.iter_mut().map(Some).collect();
    keys.iter().filter_map(|&k| slots[k].take()).collect()
}

/// One call. A request (CHECK, or PEEK when `check` is false) first moves
/// the clock by `tick` (negative: a step back).
#[derive(Clone, Debug)]
pub enum Call {
    Request {
        check: bool,
        tick: i64,
        /// (window, max) pairs.
        limits: Vec<(u64, u64)>,
        cost: u64,
        precision: u64,
        block: Option<u64>,
    },
    /// CHARGE: moves the clock by `tick`, then records `cost` whatever the
    /// limits say.
    Charge {
        tick: i64,
        limits: Vec<(u64, u64)>,
        cost: u64,
        precision: u64,
    },
    Undo(u64),
    Unblock,
}

/// Runs `calls` against the core and the model from the same start and
/// describes the first difference. Calls whose numbers no command could
/// pass (zero, a cost above a max, a repeated window, a precision above a
/// window) are skipped.
pub fn compare(calls: &[Call]) -> Result<(), String> {
    let mut state = State::default();
    let mut model = Model::default();
    let mut clock: Millis = 1_000;
    for (index, call) in calls.iter().enumerate() {
        let fail = |what: String| Err(format!("call {index} {call:?}: {what}"));
        match call {
            Call::Request {
                check,
                tick,
                limits,
                cost,
                precision,
                block,
            } => {
                clock += tick;
                let Some(request) = request(limits, *cost, *precision, *block) else {
                    continue;
                };
                let plain = Plain {
                    limits,
                    cost: *cost,
                    block: *block,
                };
                let (core, expected) = if *check {
                    let verdict = limiter::decide(existing(&state), clock, &request);
                    if let Some(write) = verdict.write {
                        limiter::apply(&mut state, &write);
                    }
                    (verdict.decision, model.check(clock, &plain, *precision))
                } else {
                    (
                        limiter::peek(existing(&state), clock, &request),
                        model.peek(clock, &plain),
                    )
                };
                if core != expected {
                    return fail(format!("core {core:?}, model {expected:?}"));
                }
            }
            Call::Charge {
                tick,
                limits,
                cost,
                precision,
            } => {
                clock += tick;
                let Some(charge) = charge_of(limits, *cost, *precision) else {
                    continue;
                };
                let core = limiter::charge(existing(&state), clock, &charge).map(|record| {
                    limiter::apply(&mut state, &limiter::Write::Record(record));
                    limiter::settled(&state, clock, &charge)
                });
                let plain = Plain {
                    limits,
                    cost: *cost,
                    block: None,
                };
                let expected = model.charge(clock, &plain, *precision);
                if core.ok() != expected {
                    return fail(format!("core {core:?}, model {expected:?}"));
                }
            }
            Call::Undo(n) => {
                let Some(n) = NonZeroU64::new(*n) else {
                    continue;
                };
                let (got, want) = (limiter::refund(&mut state, n), model.refund(n.get()));
                if got != want {
                    return fail(format!("refunded {got}, model {want}"));
                }
            }
            Call::Unblock => {
                let (got, want) = (limiter::unblock(&mut state, clock), model.unblock(clock));
                if got != want {
                    return fail(format!("unblocked {got}, model {want}"));
                }
            }
        }
        if let Err(error) = same(&state, &model) {
            return fail(error);
        }
    }
    Ok(())
}

fn request(
    limits: &[(u64, u64)],
    cost: u64,
    precision: u64,
    block: Option<u64>,
) -> Option<Request> {
    let limits = limits_of(limits)?;
    let request =
        Request::new(&limits, NonZeroU64::new(cost)?, NonZeroU64::new(precision)?).ok()?;
    match block {
        None => Some(request),
        Some(ms) => request.with_block(NonZeroU64::new(ms)?).ok(),
    }
}

/// Limits of plain numbers, if every window and max is above zero.
fn limits_of(limits: &[(u64, u64)]) -> Option<Vec<Limit>> {
    limits
        .iter()
        .map(|&(window, max)| {
            Some(Limit {
                window: NonZeroU64::new(window)?,
                max: NonZeroU64::new(max)?,
            })
        })
        .collect()
}

/// A charge of plain numbers, if a command could pass them.
fn charge_of(limits: &[(u64, u64)], cost: u64, precision: u64) -> Option<Charge> {
    let limits = limits_of(limits)?;
    Charge::new(&limits, NonZeroU64::new(cost)?, NonZeroU64::new(precision)?).ok()
}

/// What the contract answers to one command: a decision (CHECK, PEEK), a
/// joint decision (MCHECK, MPEEK), a settlement (CHARGE, MCHARGE), an
/// integer (UNDO, UNBLOCK), integers
/// (MUNDO), or an error reply's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Decision(Decision),
    Joint(Joint),
    /// CHARGE's: over, remaining, retry_after_ms, reset_after_ms.
    Settlement(Settlement),
    /// MCHARGE's: CHARGE's four over every key, and the keys over.
    JointSettlement(JointSettlement),
    Integer(i64),
    Integers(Vec<i64>),
    /// GCRA's: redis-cell's five integers.
    Bucket([i64; 5]),
    Error(String),
}

/// The server's answer to a command on a key of the other type.
const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

/// A token bucket as the contract observes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketState {
    /// The last charge's time, its period (ms) and the level it left, in
    /// `1 / period` tokens.
    pub at: Millis,
    pub period: u64,
    pub level: u64,
    /// When the key expires.
    pub expires: Millis,
}

/// A key as the contract leaves it: its model, and when it expires (the
/// server drops it once its clock passes that).
#[derive(Clone, Default)]
struct Key {
    model: Model,
    expires: Millis,
}

impl Key {
    /// The expiry a write sets: the log's own (its newest entry's time plus
    /// its window) or the block's end, whichever is later.
    fn own_expiry(&self) -> Millis {
        let log = self
            .model
            .entries
            .last()
            .map_or(0, |e| e.at + self.model.window as Millis);
        log.max(self.model.blocked_until)
    }

    fn snapshot(&self) -> (Vec<Entry>, u64, Millis) {
        (
            self.model.entries.clone(),
            self.model.window,
            self.model.blocked_until,
        )
    }
}

/// A key's state as the contract observes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyState {
    /// (time, cost), oldest first.
    pub entries: Vec<(Millis, u64)>,
    /// The longest window the log keeps (meaningless while it holds no
    /// entry).
    pub window: u64,
    /// When its block ends (0: none).
    pub blocked_until: Millis,
    /// When the key expires.
    pub expires: Millis,
}

/// The contract's command layer over the model: a command's words in (as
/// a client sends them), the module's answer out, every key's state and
/// expiry kept as a server keeps them. Arguments are read by the core's
/// own parser (`args`): its errors are the contract's. What it leaves out:
/// `ratelimit.max-entries` (no corpus holds a million entries) and other
/// types of keys.
#[derive(Clone, Default)]
pub struct Keyspace {
    keys: std::collections::BTreeMap<Vec<u8>, Key>,
    /// Token buckets (RATELIMIT.GCRA): keys of a type of their own.
    buckets: std::collections::BTreeMap<Vec<u8>, gcra::Model>,
}

impl Keyspace {
    /// The answer to `words` at `clock` (ms), and what it changes.
    pub fn call(&mut self, clock: Millis, words: &[Vec<u8>]) -> Answer {
        let name = words
            .first()
            .map(|w| String::from_utf8_lossy(w).to_ascii_lowercase());
        let arity = match name.as_deref() {
            Some("ratelimit.check") => crate::args::CHECK_ARITY,
            Some("ratelimit.peek") => crate::args::PEEK_ARITY,
            Some("ratelimit.undo") => crate::args::UNDO_ARITY,
            Some("ratelimit.unblock") => crate::args::UNBLOCK_ARITY,
            Some("ratelimit.mcheck") => crate::args::MCHECK_ARITY,
            Some("ratelimit.mpeek") => crate::args::MPEEK_ARITY,
            Some("ratelimit.gcra") => crate::args::GCRA_ARITY,
            Some("ratelimit.charge") => crate::args::CHARGE_ARITY,
            Some("ratelimit.mcharge") => crate::args::MCHARGE_ARITY,
            _ => crate::args::MUNDO_ARITY,
        };
        if !crate::args::meets_arity(words.len(), arity) {
            return Answer::Error(error_text(
                name.as_deref().unwrap_or(""),
                crate::args::ArgError::WrongArity,
            ));
        }
        let result = match name.as_deref() {
            Some("ratelimit.check") => self.limit_call(clock, words, true),
            Some("ratelimit.peek") => self.limit_call(clock, words, false),
            Some("ratelimit.undo") => self.undo(clock, words),
            Some("ratelimit.unblock") => self.unblock(clock, words),
            Some("ratelimit.mcheck") => self.multi_call(clock, words, true),
            Some("ratelimit.mpeek") => self.multi_call(clock, words, false),
            Some("ratelimit.mundo") => self.multi_undo(clock, words),
            Some("ratelimit.gcra") => self.gcra(clock, words),
            Some("ratelimit.charge") => self.charge(clock, words),
            Some("ratelimit.mcharge") => self.multi_charge(clock, words),
            _ => Err(crate::args::ArgError::Invalid("unknown command".into())),
        };
        result
            .unwrap_or_else(|error| Answer::Error(error_text(name.as_deref().unwrap_or(""), error)))
    }

    /// A key's state, if it exists at `clock`.
    pub fn key(&self, clock: Millis, name: &[u8]) -> Option<KeyState> {
        let key = self.keys.get(name).filter(|k| clock <= k.expires)?;
        Some(KeyState {
            entries: key.model.entries.iter().map(|e| (e.at, e.cost)).collect(),
            window: key.model.window,
            blocked_until: key.model.blocked_until,
            expires: key.expires,
        })
    }

    /// A token bucket's state, if it exists at `clock`.
    pub fn bucket(&self, clock: Millis, name: &[u8]) -> Option<BucketState> {
        let (at, period, level, expires) = self.buckets.get(name)?.held(clock)?;
        Some(BucketState {
            at,
            period,
            level,
            expires,
        })
    }

    /// A sliding-window call's refusal of the keys it names, if one is a
    /// token bucket; a bucket past its expiry goes (a server expires a key
    /// on access).
    fn logs_only<'n>(
        &mut self,
        clock: Millis,
        names: impl IntoIterator<Item = &'n [u8]>,
    ) -> Option<Answer> {
        let names: Vec<&[u8]> = names.into_iter().collect();
        if names.iter().any(|n| self.bucket(clock, n).is_some()) {
            return Some(Answer::Error(WRONGTYPE.into()));
        }
        for name in names {
            self.buckets.remove(name);
        }
        None
    }

    /// RATELIMIT.GCRA: WRONGTYPE on a sliding window's key; else the token
    /// bucket's answer (a log past its expiry goes), or for a charge past
    /// what a bucket holds exactly, the error.
    fn gcra(&mut self, clock: Millis, words: &[Vec<u8>]) -> Result<Answer, crate::args::ArgError> {
        let call = crate::args::parse_gcra(words, crate::args::GcraSyntax::Module)?;
        if self.key(clock, call.key).is_some() {
            return Ok(Answer::Error(WRONGTYPE.into()));
        }
        self.keys.remove(call.key.as_slice());
        let bucket = self.buckets.entry(call.key.clone()).or_default();
        Ok(
            match bucket.answer(clock, &call.limit, call.tokens, call.op, call.units) {
                Some(reply) => Answer::Bucket(reply),
                None => Answer::Error(format!("ERR {}", crate::args::GCRA_OVERFLOW)),
            },
        )
    }

    /// The keys that exist at `clock`, in order.
    pub fn names(&self, clock: Millis) -> Vec<Vec<u8>> {
        self.keys
            .iter()
            .filter(|(_, k)| clock <= k.expires)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Takes the key out to change it, if it exists at `clock`. A key past
    /// its expiry is gone when a call names it, as a server expires a key on
    /// access; if the clock steps back first, it is there again (what a
    /// server's own sweep took by then cannot be pinned).
    fn take(&mut self, clock: Millis, name: &[u8]) -> Option<Key> {
        self.keys.remove(name).filter(|key| clock <= key.expires)
    }

    /// Runs `change` on the key named (a new one if it does not exist), then
    /// keeps it with the expiry a write sets if it changed, or drops it if
    /// it holds nothing.
    fn change<T>(&mut self, clock: Millis, name: &[u8], change: impl FnOnce(&mut Key) -> T) -> T {
        let mut key = self.take(clock, name).unwrap_or_default();
        let before = key.snapshot();
        let result = change(&mut key);
        if key.snapshot() != before {
            key.expires = key.own_expiry();
        }
        if key.model.exists() {
            self.keys.insert(name.to_vec(), key);
        }
        result
    }

    fn limit_call(
        &mut self,
        clock: Millis,
        words: &[Vec<u8>],
        check: bool,
    ) -> Result<Answer, crate::args::ArgError> {
        let call = crate::args::parse_limit_call(words)?;
        if let Some(refused) = self.logs_only(clock, [call.key.as_slice()]) {
            return Ok(refused);
        }
        let (limits, plain_cost, block, precision) = plain_parts(&call.request);
        let plain = Plain {
            limits: &limits,
            cost: plain_cost,
            block,
        };
        let decision = self.change(clock, call.key, |key| match check {
            true => key.model.check(clock, &plain, precision),
            false => key.model.peek(clock, &plain),
        });
        Ok(Answer::Decision(decision))
    }

    fn multi_call(
        &mut self,
        clock: Millis,
        words: &[Vec<u8>],
        check: bool,
    ) -> Result<Answer, crate::args::ArgError> {
        let call = crate::args::parse_multi_call(words)?;
        if let Some(refused) = self.logs_only(clock, call.calls.iter().map(|c| c.key.as_slice())) {
            return Ok(refused);
        }
        let names: Vec<Vec<u8>> = call.calls.iter().map(|c| c.key.clone()).collect();
        let parts: Vec<_> = call.calls.iter().map(|c| plain_parts(&c.request)).collect();
        let plain: Vec<Plain> = parts
            .iter()
            .map(|(limits, cost, block, _)| Plain {
                limits,
                cost: *cost,
                block: *block,
            })
            .collect();
        let precision = parts.first().map_or(1, |p| p.3);
        let mut keys: Vec<Key> = names
            .iter()
            .map(|n| self.take(clock, n).unwrap_or_default())
            .collect();
        let before: Vec<_> = keys.iter().map(Key::snapshot).collect();
        let joint = {
            let mut models: Vec<&mut Model> = keys.iter_mut().map(|k| &mut k.model).collect();
            joint(&mut models, clock, &plain, precision, check)
        };
        for ((name, mut key), before) in names.into_iter().zip(keys).zip(before) {
            if key.snapshot() != before {
                key.expires = key.own_expiry();
            }
            if key.model.exists() {
                self.keys.insert(name, key);
            }
        }
        // Positions are 1-based in the reply.
        Ok(Answer::Joint(joint))
    }

    /// CHARGE: recorded whatever the limits and a block say; refused,
    /// changing nothing, if the key would hold more than [`MAX_COST`].
    fn charge(
        &mut self,
        clock: Millis,
        words: &[Vec<u8>],
    ) -> Result<Answer, crate::args::ArgError> {
        let call = crate::args::parse_charge(words)?;
        if let Some(refused) = self.logs_only(clock, [call.key.as_slice()]) {
            return Ok(refused);
        }
        let (limits, cost, precision) = charge_parts(&call.request);
        let plain = Plain {
            limits: &limits,
            cost,
            block: None,
        };
        let settled = self.change(clock, call.key, |key| {
            key.model.charge(clock, &plain, precision)
        });
        Ok(settled.map_or_else(
            || Answer::Error(format!("ERR {}", crate::args::OVERFLOW)),
            Answer::Settlement,
        ))
    }

    /// MCHARGE: every key's type, then every key's overflow, checked before
    /// any is charged; an overflow names its key.
    fn multi_charge(
        &mut self,
        clock: Millis,
        words: &[Vec<u8>],
    ) -> Result<Answer, crate::args::ArgError> {
        let call = crate::args::parse_multi_charge(words)?;
        if let Some(refused) = self.logs_only(clock, call.calls.iter().map(|c| c.key.as_slice())) {
            return Ok(refused);
        }
        let names: Vec<Vec<u8>> = call.calls.iter().map(|c| c.key.clone()).collect();
        let parts: Vec<_> = call
            .calls
            .iter()
            .map(|c| charge_parts(&c.request))
            .collect();
        let plain: Vec<Plain> = parts
            .iter()
            .map(|(limits, cost, _)| Plain {
                limits,
                cost: *cost,
                block: None,
            })
            .collect();
        let precision = parts.first().map_or(1, |p| p.2);
        let mut keys: Vec<Key> = names
            .iter()
            .map(|n| self.take(clock, n).unwrap_or_default())
            .collect();
        let before: Vec<_> = keys.iter().map(Key::snapshot).collect();
        let settled = {
            let mut models: Vec<&mut Model> = keys.iter_mut().map(|k| &mut k.model).collect();
            joint_charge(&mut models, clock, &plain, precision)
        };
        for ((name, mut key), before) in names.iter().zip(keys).zip(before) {
            if key.snapshot() != before {
                key.expires = key.own_expiry();
            }
            if key.model.exists() {
                self.keys.insert(name.clone(), key);
            }
        }
        Ok(match settled {
            Ok(joint) => Answer::JointSettlement(joint),
            Err(position) => Answer::Error(format!(
                "ERR {}",
                crate::args::about_key(&names[position], crate::args::OVERFLOW)
            )),
        })
    }

    fn undo(&mut self, clock: Millis, words: &[Vec<u8>]) -> Result<Answer, crate::args::ArgError> {
        let call = crate::args::parse_undo(words)?;
        if let Some(refused) = self.logs_only(clock, [call.key.as_slice()]) {
            return Ok(refused);
        }
        Ok(Answer::Integer(self.refund(
            clock,
            call.key,
            call.units.get(),
        )))
    }

    fn multi_undo(
        &mut self,
        clock: Millis,
        words: &[Vec<u8>],
    ) -> Result<Answer, crate::args::ArgError> {
        let call = crate::args::parse_multi_undo(words)?;
        if let Some(refused) = self.logs_only(clock, call.keys.iter().map(|k| k.as_slice())) {
            return Ok(refused);
        }
        let units = call.units.get();
        let removed = call
            .keys
            .iter()
            .map(|key| self.refund(clock, key, units))
            .collect();
        Ok(Answer::Integers(removed))
    }

    /// A refund keeps the key's expiry; a key left with no entry goes,
    /// unless a block in force keeps it until the block's end.
    fn refund(&mut self, clock: Millis, name: &[u8], units: u64) -> i64 {
        let Some(mut key) = self.take(clock, name) else {
            return 0;
        };
        let removed = key.model.refund(units);
        let now = key.model.now(clock);
        // A refund of nothing writes nothing: the key lives to its expiry.
        let kept = removed == 0 || !key.model.entries.is_empty() || key.model.blocked_at(now);
        if key.model.entries.is_empty() && kept && removed > 0 {
            key.expires = key.model.blocked_until;
        }
        if kept {
            self.keys.insert(name.to_vec(), key);
        }
        removed as i64
    }

    /// UNBLOCK: a lifted key keeps its log and expires when its newest
    /// entry leaves its window; a key with nothing live left goes.
    fn unblock(
        &mut self,
        clock: Millis,
        words: &[Vec<u8>],
    ) -> Result<Answer, crate::args::ArgError> {
        let call = crate::args::parse_unblock(words)?;
        if let Some(refused) = self.logs_only(clock, [call.key.as_slice()]) {
            return Ok(refused);
        }
        let Some(mut key) = self.take(clock, call.key) else {
            return Ok(Answer::Integer(0));
        };
        let now = key.model.now(clock);
        let lifted = key.model.unblock(clock);
        if !lifted {
            self.keys.insert(call.key.clone(), key);
            return Ok(Answer::Integer(0));
        }
        let expires = key.own_expiry();
        if !key.model.entries.is_empty() && expires > now {
            key.expires = expires;
            self.keys.insert(call.key.clone(), key);
        }
        Ok(Answer::Integer(1))
    }
}

/// A parsed request as the model takes it: (window, max) pairs, cost,
/// block, precision.
fn plain_parts(request: &Request) -> (Vec<(u64, u64)>, u64, Option<u64>, u64) {
    let limits = request
        .limits()
        .iter()
        .map(|l| (l.window.get(), l.max.get()))
        .collect();
    (
        limits,
        request.cost().get(),
        request.block().map(NonZeroU64::get),
        request.precision().get(),
    )
}

/// A parsed charge as the model takes it: (window, max) pairs, cost,
/// precision.
fn charge_parts(charge: &Charge) -> (Vec<(u64, u64)>, u64, u64) {
    let limits = charge
        .limits()
        .iter()
        .map(|l| (l.window.get(), l.max.get()))
        .collect();
    (limits, charge.cost().get(), charge.precision().get())
}

/// An error reply as the module sends it: the server's arity text, or
/// `ERR` and the text, a NUL, CR or LF byte shown as a space.
fn error_text(command: &str, error: crate::args::ArgError) -> String {
    let text = match error {
        crate::args::ArgError::WrongArity => {
            format!("wrong number of arguments for '{command}' command")
        }
        crate::args::ArgError::Invalid(text) => text,
    };
    format!("ERR {text}").replace(['\0', '\r', '\n'], " ")
}
