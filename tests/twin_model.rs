//! The script twin's timed fields, against a model, with the clock under
//! the test's control: the unmodified twin/ratelimit.lua runs in an
//! embedded Lua 5.1 whose TIME reads the test's clock (harness
//! `EmbeddedTwin`), so retry_after_ms and reset_after_ms, expiry, pruning
//! and compaction are exact here, where a live server's clock would not
//! let them be. The model is the contract written the slow, obvious way
//! (as src/reference.rs is), with decision 1 (a denied CHECK whose longest
//! window is longer than the log's registers it) and issue 18's blocks: a
//! CHECK with `BLOCK ms` denied by its limits blocks the key for `ms`, a
//! call on a blocked key is denied with at least the rest of the block to
//! wait, UNBLOCK lifts it, and the key lives until its block ends. MCHECK
//! and MPEEK over up to three keys are held to one model per key: every
//! key or none records, and a denial blocks only the keys whose own limits
//! denied.

use harness::{twin_format, EmbeddedTwin, Reply};
use proptest::prelude::*;

#[derive(Default)]
struct Model {
    /// (time, cost), oldest first.
    entries: Vec<(i64, u64)>,
    window: u64,
    /// When the newest entry leaves the window (if there are entries).
    expires: i64,
    /// When the key's block ends (0: none).
    blocked_until: i64,
}

/// A CHECK (or PEEK) and its arguments.
#[derive(Clone, Debug)]
struct Request {
    check: bool,
    limits: Vec<(u64, u64)>,
    cost: u64,
    precision: u64,
    block: Option<u64>,
    /// COST and PRECISION sent even when 1 (else left out, as most calls
    /// leave them: the twin's fast path).
    spelled: bool,
}

#[derive(Clone, Debug)]
enum Call {
    /// The clock moves by `tick` ms, then the request is sent.
    Request {
        tick: i64,
        request: Request,
    },
    /// The clock moves by `tick` ms, then MCHECK (or MPEEK) over the keys
    /// at these positions of `NAMES`, each with its request (COST,
    /// PRECISION and BLOCK shared).
    Multi {
        tick: i64,
        keys: Vec<usize>,
        requests: Vec<Request>,
    },
    Undo(u64),
    Unblock,
}

/// The keys: single-key calls go to the first.
const NAMES: [&str; 3] = ["k", "b", "c"];

impl Model {
    /// The key exists while it holds entries or a block.
    fn exists(&self) -> bool {
        !self.entries.is_empty() || self.blocked_until > 0
    }

    /// The key expires as Redis expires it: after its expiry time, the
    /// later of its log's and its block's end.
    fn expire(&mut self, clock: i64) {
        let log_expires = if self.entries.is_empty() {
            0
        } else {
            self.expires
        };
        if self.exists() && clock > log_expires.max(self.blocked_until) {
            *self = Model::default();
        }
    }

    /// The key's time at this clock: never before its newest entry.
    fn now(&self, clock: i64) -> i64 {
        self.newest().map_or(clock, |t| t.max(clock))
    }

    /// A decision under a block of `rest` more ms: denied, no room, and
    /// at least the rest of the block to wait and to reset.
    fn under_block(seen: [i64; 4], rest: i64) -> [i64; 4] {
        [0, 0, seen[2].max(rest), seen[3].max(rest)]
    }

    fn used_at(&self, now: i64, window: u64) -> u64 {
        let live = |&&(t, _): &&(i64, u64)| now - (window as i64) < t && t <= now;
        self.entries.iter().filter(live).map(|&(_, c)| c).sum()
    }

    fn fits_at(&self, now: i64, limits: &[(u64, u64)], cost: u64) -> bool {
        limits
            .iter()
            .all(|&(window, max)| self.used_at(now, window) + cost <= max)
    }

    fn longest(limits: &[(u64, u64)]) -> u64 {
        limits.iter().map(|&(w, _)| w).max().unwrap_or(0)
    }

    fn newest(&self) -> Option<i64> {
        self.entries.last().map(|&(t, _)| t)
    }

    fn decide(&self, now: i64, limits: &[(u64, u64)], cost: u64) -> [i64; 4] {
        let allowed = self.fits_at(now, limits, cost);
        let longest = Self::longest(limits);
        let room = |&(window, max): &(u64, u64)| max.saturating_sub(self.used_at(now, window));
        let remaining = limits.iter().map(room).min().unwrap_or(0);
        // Room only comes back when an entry leaves a window: the first
        // such moment at which the request fits.
        let mut moments: Vec<i64> = self
            .entries
            .iter()
            .flat_map(|&(t, _)| limits.iter().map(move |&(w, _)| t + w as i64 - now))
            .filter(|&d| d > 0)
            .collect();
        moments.sort_unstable();
        let retry = if allowed {
            0
        } else {
            moments
                .into_iter()
                .find(|&d| self.fits_at(now + d, limits, cost))
                .expect("fits once the longest window has passed")
        };
        // Decision 2's wording: the newest entry + the call's longest
        // window - now, or 0 when that window holds nothing.
        let horizon = now - longest as i64;
        let reset = self.newest().map_or(0, |t| (t - horizon).max(0));
        [allowed as i64, remaining as i64, retry, reset]
    }

    /// What a call sees at `clock`: the key's time, whether the key is
    /// blocked, and the decision (under the block if it is).
    fn standing(&mut self, clock: i64, call: &Request) -> (i64, bool, [i64; 4]) {
        self.expire(clock);
        let now = self.now(clock);
        let blocked = now < self.blocked_until;
        let mut seen = self.decide(now, &call.limits, call.cost);
        if blocked {
            seen = Self::under_block(seen, self.blocked_until - now);
        }
        (now, blocked, seen)
    }

    /// A denied call's writes on this key: its longest window if longer
    /// than the log's, and with BLOCK a block if the key's own limits
    /// denied (`seen`) and it was not blocked. The key's answer after.
    fn deny(&mut self, now: i64, blocked: bool, mut seen: [i64; 4], call: &Request) -> [i64; 4] {
        let longest = Self::longest(&call.limits);
        // A log with no entry (a blocked key a refund emptied) keeps no
        // window, so a denial by its block widens nothing.
        let wider = !self.entries.is_empty() && longest > self.window;
        let starts_block = call.block.filter(|_| !blocked && seen[0] == 0);
        if let Some(ms) = starts_block {
            self.blocked_until = now + ms as i64;
            seen = Self::under_block(seen, ms as i64);
        }
        // Either write sets the expiry afresh, from the log's own.
        if wider || starts_block.is_some() {
            self.window = self.window.max(longest);
            if let Some(newest) = self.newest() {
                self.expires = newest + self.window as i64;
            }
        }
        seen
    }

    /// Records an allowed request at `now`; CHECK's reply.
    fn record(&mut self, now: i64, call: &Request) -> [i64; 4] {
        let longest = Self::longest(&call.limits);
        // Recording at or after a block's end clears it.
        self.blocked_until = 0;
        self.window = self.window.max(longest);
        let horizon = now - self.window as i64;
        self.entries.retain(|&(t, _)| t > horizon);
        let cell = |t: i64| t.div_euclid(call.precision as i64);
        match self.entries.last_mut() {
            Some(newest) if cell(newest.0) == cell(now) => *newest = (now, newest.1 + call.cost),
            _ => self.entries.push((now, call.cost)),
        }
        self.expires = now + self.window as i64;
        let after = self.decide(now, &call.limits, 0)[1];
        [1, after, 0, longest as i64]
    }

    fn request(&mut self, clock: i64, call: &Request) -> [i64; 4] {
        let (now, blocked, seen) = self.standing(clock, call);
        match (call.check, seen[0]) {
            (false, _) => seen,
            (true, 0) => self.deny(now, blocked, seen, call),
            _ => self.record(now, call),
        }
    }

    fn undo(&mut self, clock: i64, units: u64) -> u64 {
        self.expire(clock);
        // A refund of nothing changes nothing (the key, if a block keeps
        // it, expires when the block ends).
        if self.entries.is_empty() {
            return 0;
        }
        let mut removed = 0;
        while removed < units {
            let Some(newest) = self.entries.last_mut() else {
                break;
            };
            let taken = newest.1.min(units - removed);
            newest.1 -= taken;
            removed += taken;
            if newest.1 == 0 {
                self.entries.pop();
            }
        }
        // An emptied log goes with its key, unless a block keeps the key;
        // then it keeps no window (its next entry lives under its own).
        if self.entries.is_empty() {
            match self.blocked_until <= clock {
                true => *self = Model::default(),
                false => self.window = 0,
            }
        }
        removed
    }

    fn unblock(&mut self, clock: i64) -> i64 {
        self.expire(clock);
        let now = self.now(clock);
        if now >= self.blocked_until {
            return 0;
        }
        self.blocked_until = 0;
        // The expiry returns to the log's own: when its newest entry
        // leaves its window (which a refund may have made earlier).
        match self.newest().map(|t| t + self.window as i64) {
            Some(expires) if expires > now => self.expires = expires,
            _ => *self = Model::default(),
        }
        1
    }
}

/// MCHECK (`check`) or MPEEK over several keys, each with its model and
/// its request: allowed iff every key allows; then every key records
/// (MCHECK); else each key answers as a denied call on it alone (MCHECK
/// writes its window and block). The 4 fields over every key's answer,
/// and the 1-based positions of the keys that denied.
fn joint(models: &mut [&mut Model], clock: i64, calls: &[Request], check: bool) -> Reply {
    let seen: Vec<(i64, bool, [i64; 4])> = models
        .iter_mut()
        .zip(calls)
        .map(|(model, call)| model.standing(clock, call))
        .collect();
    let allowed = seen.iter().all(|(_, _, s)| s[0] == 1);
    let answers: Vec<[i64; 4]> = models
        .iter_mut()
        .zip(calls)
        .zip(&seen)
        .map(
            |((model, call), &(now, blocked, seen))| match (check, allowed) {
                (false, _) => seen,
                (true, true) => model.record(now, call),
                (true, false) => model.deny(now, blocked, seen, call),
            },
        )
        .collect();
    let denied: Vec<i64> = (1..)
        .zip(&answers)
        .filter(|(_, a)| a[0] == 0)
        .map(|(position, _)| position)
        .collect();
    let least = |field: usize| answers.iter().map(|a| a[field]).min().unwrap_or(0);
    let most = |field: usize| answers.iter().map(|a| a[field]).max().unwrap_or(0);
    Reply::Joint([allowed as i64, least(1), most(2), most(3)], denied)
}

/// Whether the module would accept these numbers (the twin's argument
/// errors are held to the module's by tests/differential.rs).
fn valid(request: &Request) -> bool {
    let mut windows: Vec<u64> = request.limits.iter().map(|&(w, _)| w).collect();
    windows.sort_unstable();
    windows.dedup();
    windows.len() == request.limits.len()
        && request.limits.iter().all(|&(_, max)| request.cost <= max)
        && windows.first().is_some_and(|&w| request.precision <= w)
}

fn words(request: &Request) -> Vec<String> {
    let mut words: Vec<String> = request
        .limits
        .iter()
        .flat_map(|&(w, m)| [w.to_string(), m.to_string()])
        .collect();
    words.extend(words_of_options(request));
    words
}

/// MCHECK's or MPEEK's words after the keys: each key's pairs, then the
/// shared options.
fn multi_words(requests: &[Request]) -> Vec<String> {
    let mut words = vec![];
    for request in requests {
        words.push(request.limits.len().to_string());
        words.extend(
            request
                .limits
                .iter()
                .flat_map(|&(w, m)| [w.to_string(), m.to_string()]),
        );
    }
    let options = words_of_options(&requests[0]);
    words.extend(options);
    words
}

/// COST, PRECISION and BLOCK as words.
fn words_of_options(request: &Request) -> Vec<String> {
    let mut words = vec![];
    if request.spelled || request.cost != 1 {
        words.extend(["COST".into(), request.cost.to_string()]);
    }
    if request.spelled || request.precision != 1 {
        words.extend(["PRECISION".into(), request.precision.to_string()]);
    }
    if let Some(ms) = request.block {
        words.extend(["BLOCK".into(), ms.to_string()]);
    }
    words
}

fn run(calls: &[Call]) -> Result<(), String> {
    run_on(&EmbeddedTwin::new(), calls, &mut Reach::default())
}

/// What the paged form's stored values reached over a run (read from the
/// first key's value after each call).
#[derive(Default, Debug)]
struct Reach {
    /// Calls after which the value was paged.
    paged: usize,
    /// The most runs of slots, and of sealed pages, seen at once.
    runs: usize,
    sealed: usize,
    /// Times a paged value went back to the small form.
    unpaged: usize,
    /// Times a paged value was written anew in fewer slots.
    compacted: usize,
    /// The paged value's slots after the last call (0: not paged).
    slots: usize,
}

impl Reach {
    fn see(&mut self, value: Option<Vec<u8>>, was_paged: &mut bool) {
        let paged = value.as_ref().is_some_and(|v| v.get(2) == Some(&3));
        if *was_paged && !paged {
            self.unpaged += 1;
        }
        *was_paged = paged;
        let Some(v) = value.filter(|_| paged) else {
            self.slots = 0;
            return;
        };
        self.paged += 1;
        let slots = usize::from(v[71]) + 256 * usize::from(v[72]);
        if slots < self.slots {
            self.compacted += 1;
        }
        self.slots = slots;
        // The three runs: 2-byte start and count each, from byte 73.
        let counts: Vec<usize> = (0..3)
            .map(|i| usize::from(v[75 + 4 * i]) + 256 * usize::from(v[76 + 4 * i]))
            .collect();
        self.runs = self.runs.max(counts.iter().filter(|&&c| c > 0).count());
        self.sealed = self.sealed.max(counts.iter().sum());
    }
}

fn run_on(twin: &EmbeddedTwin, calls: &[Call], reach: &mut Reach) -> Result<(), String> {
    let mut was_paged = false;
    let mut models: [Model; 3] = Default::default();
    // A realistic epoch time, so the stored times take their real width.
    let mut clock: i64 = 1_764_000_000_000;
    for (index, call) in calls.iter().enumerate() {
        let model = &mut models[0];
        let (got, want) = match call {
            Call::Request { tick, request } => {
                clock += tick;
                if !valid(request) {
                    continue;
                }
                twin.set_clock(clock);
                let operation = if request.check { "check" } else { "peek" };
                let got = twin.call(NAMES[0], operation, &words(request));
                (got, Reply::Decision(model.request(clock, request)))
            }
            Call::Multi {
                tick,
                keys,
                requests,
            } => {
                clock += tick;
                if !requests.iter().all(valid) {
                    continue;
                }
                twin.set_clock(clock);
                let check = requests[0].check;
                let operation = if check { "mcheck" } else { "mpeek" };
                let names: Vec<&str> = keys.iter().map(|&k| NAMES[k]).collect();
                let got = twin.call_keys(&names, operation, &multi_words(requests));
                // Each key's model, in the call's key order.
                let mut slots: Vec<Option<&mut Model>> = models.iter_mut().map(Some).collect();
                let mut ordered: Vec<&mut Model> = keys
                    .iter()
                    .map(|&k| slots[k].take().expect("each key once"))
                    .collect();
                (got, joint(&mut ordered, clock, requests, check))
            }
            Call::Undo(units) => {
                twin.set_clock(clock);
                let got = twin.call(NAMES[0], "undo", &["COST".into(), units.to_string()]);
                (got, Reply::Integer(model.undo(clock, *units) as i64))
            }
            Call::Unblock => {
                twin.set_clock(clock);
                let got = twin.call(NAMES[0], "unblock", &[]);
                (got, Reply::Integer(model.unblock(clock)))
            }
        };
        if got != want {
            return Err(format!(
                "call {index} {call:?} at {clock}: twin {got:?}, model {want:?}"
            ));
        }
        reach.see(twin.value(NAMES[0]), &mut was_paged);
        for (name, model) in NAMES.iter().zip(models.iter_mut()) {
            model.expire(clock);
            // What the stored bytes mean, read by the Rust reader: the
            // model's entries, block and (while it holds entries) window.
            if let Some(value) = twin.value(name).filter(|_| model.exists()) {
                let log = twin_format::decode_paged_by(&value, twin.page)
                    .map_err(|e| format!("call {index} {call:?}: {name}'s value: {e}"))?;
                let window = if model.entries.is_empty() {
                    log.window
                } else {
                    model.window
                };
                if (&log.entries, log.blocked_until, log.window)
                    != (&model.entries, model.blocked_until, window)
                {
                    return Err(format!(
                        "call {index} {call:?}: {name} holds {log:?}, the model {:?} {} {}",
                        model.entries, model.window, model.blocked_until
                    ));
                }
            }
            if twin.exists(name) != model.exists() {
                return Err(format!("call {index} {call:?}: {name} exists in one only"));
            }
        }
    }
    Ok(())
}

/// Calls with windows below `longest` (so the model's brute force stays
/// cheap and entries expire often), maxes up to `max` and now and then
/// 2^40, costs from 1 to 2^40 (multi-byte varints), a clock that mostly
/// moves forward (by up to `step`) and sometimes steps back; now and then
/// `BLOCK` (up to `longest` ms) and UNBLOCK.
fn call(longest: u64, max: u64, step: i64) -> impl Strategy<Value = Call> {
    let max = prop_oneof![6 => 1u64..max, 1 => Just(1u64 << 40)];
    let limits = proptest::collection::vec((1u64..longest, max.clone()), 1..4);
    let cost = prop_oneof![6 => Just(1u64), 6 => 1u64..6, 1 => 1u64..(1 << 40)];
    let precision = prop_oneof![6 => Just(1u64), 1 => 1u64..12];
    let block = prop_oneof![4 => Just(None), 1 => (1u64..longest).prop_map(Some)];
    // One limit more often than not, as most calls.
    let limits = prop_oneof![
        1 => proptest::collection::vec((1u64..longest, max.clone()), 1..2),
        1 => limits.clone(),
    ];
    let request = (
        prop::bool::weighted(0.8),
        limits.clone(),
        cost,
        precision,
        block,
        prop::bool::weighted(0.3),
    )
        .prop_map(|(check, limits, cost, precision, block, spelled)| Request {
            check,
            limits,
            cost,
            precision,
            block,
            spelled,
        });
    // The same request's options, each key its own limits, the keys in
    // any order.
    let keys = proptest::sample::subsequence(vec![0usize, 1, 2], 1..=3).prop_shuffle();
    let multi = (request.clone(), proptest::collection::vec(limits, 3), keys).prop_map(
        |(request, limits, keys)| {
            let requests = limits
                .into_iter()
                .take(keys.len())
                .map(|limits| Request {
                    limits,
                    ..request.clone()
                })
                .collect();
            (keys, requests)
        },
    );
    prop_oneof![
        16 => (-step / 2..step * 2, request).prop_map(|(tick, request)| Call::Request { tick, request }),
        6 => (-step / 2..step * 2, multi).prop_map(|(tick, (keys, requests))| Call::Multi { tick, keys, requests }),
        2 => (1u64..6).prop_map(Call::Undo),
        1 => Just(Call::Unblock),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn the_twin_matches_the_model_under_a_controlled_clock(
        calls in proptest::collection::vec(call(200, 12, 20), 1..200)
    ) {
        let outcome = run(&calls);
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Busy keys: up to hundreds of entries in a window, so the twin reads
    /// its value in several GETRANGE chunks from either end and compacts
    /// what it pruned.
    #[test]
    fn busy_keys_match_the_model_too(
        calls in proptest::collection::vec(call(1_000, 5_000, 6), 300..600)
    ) {
        let outcome = run(&calls);
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}

/// A log past the size the twin writes whole: its ends are read in
/// GETRANGE chunks, new entries and the header overwritten in place, and
/// the pruned prefix compacted; short windows, peeks, refunds and pauses
/// mixed in.
#[test]
fn a_long_log_is_read_at_its_ends_and_compacted() {
    let mut random = harness::Random::seeded(15);
    let calls: Vec<Call> = (0..4_000)
        .map(|i| {
            let cost = 1 + random.below(2);
            let pause = random.below(400) == 0;
            let request = |check, tick, limits: Vec<(u64, u64)>| Call::Request {
                tick,
                request: Request {
                    check,
                    limits,
                    cost,
                    precision: 1,
                    block: None,
                    spelled: false,
                },
            };
            match i % 17 {
                0 => Call::Undo(1 + cost),
                5 => request(false, 0, vec![(20, 5), (1_500, 1_000_000)]),
                9 => request(true, 1, vec![(300, 200), (1_500, 1_000_000)]),
                _ if pause => request(true, 900, vec![(1_500, 1_000_000)]),
                _ => request(true, 1, vec![(1_500, 1_000_000)]),
            }
        })
        .collect();
    run(&calls).unwrap_or_else(|e| panic!("{e}"));
}

/// The long log again with pages of 24 bytes: dozens of sealed pages, a
/// ring that wraps, runs into its first run and grows in a run of its own,
/// refunds that pull a sealed page back, and pauses that leave a page or
/// less (the small form again).
#[test]
fn small_pages_reach_every_shape_of_the_paged_form() {
    let mut random = harness::Random::seeded(16);
    let calls: Vec<Call> = (0..6_000)
        .map(|i| {
            let cost = 1 + random.below(3);
            // Steady, then growing, then thinning traffic, in turn.
            let phase = [2, 1, 3][(i / 900) % 3];
            let request = |check, tick, limits: Vec<(u64, u64)>| Call::Request {
                tick,
                request: Request {
                    check,
                    limits,
                    cost,
                    precision: 1,
                    block: None,
                    spelled: false,
                },
            };
            match i % 23 {
                0 => Call::Undo(1 + random.below(40)),
                5 => request(false, 0, vec![(20, 5), (1_500, 1_000_000)]),
                9 => request(true, 1, vec![(300, 200), (1_500, 1_000_000)]),
                _ if phase == 3 && random.below(3) > 0 => {
                    request(true, 9, vec![(1_500, 1_000_000)])
                }
                _ if random.below(600) == 0 => request(true, 1_400, vec![(1_500, 1_000_000)]),
                _ => request(true, phase, vec![(1_500, 1_000_000)]),
            }
        })
        .collect();
    let mut reach = Reach::default();
    run_on(&EmbeddedTwin::with_page(24, 65536), &calls, &mut reach)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(reach.paged > 1_000, "{reach:?}");
    assert!(reach.sealed > 20, "{reach:?}");
    assert_eq!(reach.runs, 3, "{reach:?}");
    assert!(reach.unpaged > 0, "{reach:?}");
    assert!(reach.compacted > 0, "{reach:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Random calls over pages of 16 bytes: every rule of the model across
    /// page boundaries, with several windows, costs, precisions and blocks.
    #[test]
    fn random_calls_on_small_pages_match_the_model(
        calls in proptest::collection::vec(call(400, 300, 4), 100..400)
    ) {
        let outcome = run_on(&EmbeddedTwin::with_page(16, 65536), &calls, &mut Reach::default());
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
        // Values past the size written whole: new slots by SETRANGE.
        let outcome = run_on(&EmbeddedTwin::with_page(16, 0), &calls, &mut Reach::default());
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}
