//! The script twin against the reference model, with the clock under the
//! test's control: the unmodified twin/ratelimit.lua runs in an embedded
//! Lua 5.1 whose TIME reads the test's clock (harness `EmbeddedTwin`), so
//! retry_after_ms and reset_after_ms, expiry, pruning, paging and
//! compaction are exact here, where a live server's clock would not let
//! them be. The model is the contract's one (`reference::Keyspace`, which
//! also writes contract/corpus.jsonl): random calls on three keys, CHECK
//! and PEEK with several limits, COST, PRECISION and BLOCK, CHARGE (COST
//! and PRECISION, no BLOCK), MCHECK, MPEEK and MCHARGE over up to three
//! keys, UNDO and UNBLOCK, each answered by both,
//! and every key's stored value decoded after each call and held to the
//! model's entries, window, block and expiry. Where the corpus holds the
//! contract's chosen cases, this reaches what long random runs reach: the
//! paged form's every shape.

use harness::corpus::{Held, KeyState};
use harness::{EmbeddedTwin, Reply};
use proptest::prelude::*;
use ratelimit_core::reference::{Answer, Keyspace};

/// What a request does: CHECK (MCHECK), PEEK (MPEEK) or CHARGE (MCHARGE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Check,
    Peek,
    Charge,
}

#[derive(Clone, Debug)]
struct Request {
    kind: Kind,
    limits: Vec<(u64, u64)>,
    cost: u64,
    precision: u64,
    /// BLOCK's ms (never sent with CHARGE, which has no BLOCK).
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
    /// The clock moves by `tick` ms, then MCHECK (MPEEK, MCHARGE) over the keys
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

fn words(request: &Request) -> Vec<String> {
    let mut words: Vec<String> = request
        .limits
        .iter()
        .flat_map(|&(w, m)| [w.to_string(), m.to_string()])
        .collect();
    words.extend(words_of_options(request));
    words
}

/// MCHECK's, MPEEK's or MCHARGE's words after the keys: each key's pairs, then the
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
    if let (Some(ms), false) = (request.block, request.kind == Kind::Charge) {
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

/// A call as the module's words, and the ms the clock moves first.
fn module_call(call: &Call) -> (i64, Vec<String>) {
    let strings = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    match call {
        Call::Request { tick, request } => {
            let name = match request.kind {
                Kind::Check => "RATELIMIT.CHECK",
                Kind::Peek => "RATELIMIT.PEEK",
                Kind::Charge => "RATELIMIT.CHARGE",
            };
            (*tick, [strings(&[name, NAMES[0]]), words(request)].concat())
        }
        Call::Multi {
            tick,
            keys,
            requests,
        } => {
            let name = match requests[0].kind {
                Kind::Check => "RATELIMIT.MCHECK",
                Kind::Peek => "RATELIMIT.MPEEK",
                Kind::Charge => "RATELIMIT.MCHARGE",
            };
            let mut words = strings(&[name, &keys.len().to_string()]);
            words.extend(keys.iter().map(|&k| NAMES[k].to_string()));
            words.extend(multi_words(requests));
            (*tick, words)
        }
        Call::Undo(units) => (
            0,
            strings(&["RATELIMIT.UNDO", NAMES[0], "COST", &units.to_string()]),
        ),
        Call::Unblock => (0, strings(&["RATELIMIT.UNBLOCK", NAMES[0]])),
    }
}

/// The model's answer as the twin's reply.
fn reply(answer: Answer) -> Reply {
    let fields = |d: &ratelimit_core::limiter::Decision| {
        let wait = |ms: u64| ms as i64;
        [
            d.allowed as i64,
            d.remaining as i64,
            wait(d.retry_after_ms),
            wait(d.reset_after_ms),
        ]
    };
    match answer {
        Answer::Decision(d) => Reply::Decision(fields(&d)),
        Answer::Joint(j) => Reply::Joint(
            fields(&j.decision),
            j.denied.iter().map(|&i| i as i64 + 1).collect(),
        ),
        // CHARGE's and MCHARGE's, in CHECK's and MCHECK's shapes (as the
        // corpus reads them).
        Answer::Settlement(s) => Reply::Decision(
            [s.over, s.remaining, s.retry_after_ms, s.reset_after_ms].map(|n| n as i64),
        ),
        Answer::JointSettlement(j) => Reply::Joint(
            [
                j.settlement.over,
                j.settlement.remaining,
                j.settlement.retry_after_ms,
                j.settlement.reset_after_ms,
            ]
            .map(|n| n as i64),
            j.over.iter().map(|&i| i as i64 + 1).collect(),
        ),
        Answer::Integer(n) => Reply::Integer(n),
        Answer::Integers(n) => Reply::Integers(n),
        Answer::Bucket(fields) => Reply::Bucket(fields),
        Answer::Error(text) => Reply::Error(text),
    }
}

/// The model's state of a key, as the twin's is read.
fn model_state(space: &Keyspace, clock: i64, name: &str) -> Option<Held> {
    space.key(clock, name.as_bytes()).map(|s| {
        Held::Log(KeyState {
            window: if s.entries.is_empty() { 0 } else { s.window },
            entries: s.entries,
            blocked_until: s.blocked_until,
            expires: s.expires,
        })
    })
}

fn run_on(twin: &EmbeddedTwin, calls: &[Call], reach: &mut Reach) -> Result<(), String> {
    let mut was_paged = false;
    let mut space = Keyspace::default();
    // A realistic epoch time, so the stored times take their real width.
    let mut clock: i64 = 1_764_000_000_000;
    for (index, call) in calls.iter().enumerate() {
        let (tick, words) = module_call(call);
        clock += tick;
        twin.set_clock(clock);
        let got = twin.send(&words).expect("a call in the twin's form");
        let bytes: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
        let want = reply(space.call(clock, &bytes));
        if got != want {
            return Err(format!(
                "call {index} {words:?} at {clock}: twin {got:?}, model {want:?}"
            ));
        }
        reach.see(twin.value(NAMES[0]), &mut was_paged);
        for name in NAMES {
            let held = twin
                .state(name, 0)
                .map_err(|e| format!("call {index} {words:?}: {name}'s value: {e}"))?;
            let owed = model_state(&space, clock, name);
            if held != owed {
                return Err(format!(
                    "call {index} {words:?} at {clock}: {name} holds {held:?}, the model {owed:?}"
                ));
            }
        }
    }
    Ok(())
}

/// Calls with windows below `longest` (so the model's brute force stays
/// cheap and entries expire often), maxes up to `max` and now and then
/// 2^40, costs from 1 to 2^40 (multi-byte varints), a clock that mostly
/// moves forward (by up to `step`) and sometimes steps back; now and then
/// `BLOCK` (up to `longest` ms) and UNBLOCK; CHARGEs among the requests
/// (their costs often above a max: recorded past the limits).
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
    let kind = prop_oneof![12 => Just(Kind::Check), 3 => Just(Kind::Peek), 4 => Just(Kind::Charge)];
    let request = (
        kind,
        limits.clone(),
        cost,
        precision,
        block,
        prop::bool::weighted(0.3),
    )
        .prop_map(|(kind, limits, cost, precision, block, spelled)| Request {
            kind,
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
            let request = |kind, tick, limits: Vec<(u64, u64)>| Call::Request {
                tick,
                request: Request {
                    kind,
                    limits,
                    cost,
                    precision: 1,
                    block: None,
                    spelled: false,
                },
            };
            match i % 17 {
                0 => Call::Undo(1 + cost),
                5 => request(Kind::Peek, 0, vec![(20, 5), (1_500, 1_000_000)]),
                // A settlement past the short limit, recorded all the same.
                13 => request(Kind::Charge, 1, vec![(20, 1), (1_500, 1_000_000)]),
                9 => request(Kind::Check, 1, vec![(300, 200), (1_500, 1_000_000)]),
                _ if pause => request(Kind::Check, 900, vec![(1_500, 1_000_000)]),
                _ => request(Kind::Check, 1, vec![(1_500, 1_000_000)]),
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
            let request = |kind, tick, limits: Vec<(u64, u64)>| Call::Request {
                tick,
                request: Request {
                    kind,
                    limits,
                    cost,
                    precision: 1,
                    block: None,
                    spelled: false,
                },
            };
            match i % 23 {
                0 => Call::Undo(1 + random.below(40)),
                5 => request(Kind::Peek, 0, vec![(20, 5), (1_500, 1_000_000)]),
                9 => request(Kind::Check, 1, vec![(300, 200), (1_500, 1_000_000)]),
                _ if phase == 3 && random.below(3) > 0 => {
                    request(Kind::Check, 9, vec![(1_500, 1_000_000)])
                }
                _ if random.below(600) == 0 => {
                    request(Kind::Check, 1_400, vec![(1_500, 1_000_000)])
                }
                _ => request(Kind::Check, phase, vec![(1_500, 1_000_000)]),
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
