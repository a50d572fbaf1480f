//! The script twin's token bucket (`ratelimit_gcra`, the script form's
//! `gcra`) held to the module's RATELIMIT.GCRA.
//!
//! In-process, under a clock the test sets (harness `EmbeddedTwin`): random
//! requests, CHARGEs and REFUNDs against the pure core
//! (`ratelimit_core::gcra::{decide, charge, refund}`, with each key kept,
//! deleted and expired as the module keeps it), replies exact, the stored
//! bucket decoded and the key's expiry compared after every call; limits
//! of every size up to the bounds, changed on a live key (a debt kept),
//! the clock moving forward and stepping back. And random words, valid or not, against the
//! module's own parser (`ratelimit_core::args::parse_gcra`): the same
//! error for the first thing wrong, or the same reply.
//!
//! On real servers: every malformed call of tests/gcra.rs (in this
//! command's spelling) and the arity errors, the module against the twin by
//! FCALL, by EVALSHA and as the least-privilege user; the issue's example;
//! WRONGTYPE both ways; TOKENS 0 and a limited call writing nothing; the
//! expiry beside the module's; a damaged bucket refused with its key
//! named; RESP2 and RESP3; a user without TIME.

use harness::twin_format::{self, TwinLog};
use harness::{
    all_dumps_and_expiries, error, run, server_clock_ms, twin_script, Backend, Caller,
    EmbeddedTwin, Reply, Server, TwinBucket, TWINS, USER_RULES,
};
use proptest::prelude::*;
use ratelimit_core::args::{parse_gcra, ArgError, GcraOp, GcraSyntax, GCRA_OVERFLOW};
use ratelimit_core::gcra::{charge, decide, refund, Bucket, Write, LATEST, MAX_EXACT, MAX_PERIOD};
use ratelimit_core::log::Millis;
use redis::{Connection, Value};
use std::collections::HashMap;

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
const ARITY: &str = "ERR wrong number of arguments for 'ratelimit.gcra' command";
const T0: Millis = 1_700_000_000_000;

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

// The model: the module's keys, in-process ------------------------------------

/// The keys as the module keeps them: each bucket and its absolute expiry.
#[derive(Default)]
struct Module {
    keys: HashMap<String, (Bucket, Millis)>,
}

impl Module {
    /// The module's answer to `words` (`RATELIMIT.GCRA key ...`) with its
    /// clock at `clock`: the key expires first if its time has passed (as
    /// Redis expires a key a command reads), then an allowed call stores
    /// its bucket and expiry.
    fn call(&mut self, words: &[String], clock: Millis) -> Reply {
        let call = match parse_gcra(words, GcraSyntax::Module) {
            Ok(call) => call,
            Err(ArgError::WrongArity) => return Reply::Error(ARITY.into()),
            // An error reply shows a space for a NUL, CR or LF byte.
            Err(ArgError::Invalid(text)) => {
                return Reply::Error(format!("ERR {text}").replace(['\0', '\r', '\n'], " "))
            }
        };
        let key = call.key.clone();
        if self.keys.get(&key).is_some_and(|&(_, at)| clock > at) {
            self.keys.remove(&key);
        }
        let stored = self.keys.get(&key).map(|(b, _)| b);
        let (reply, write) = match call.op {
            GcraOp::Request => {
                let verdict = decide(stored, clock, &call.limit, call.tokens);
                (
                    verdict.decision.reply(call.units),
                    verdict.charge.map(Write::Store),
                )
            }
            GcraOp::Charge => match charge(stored, clock, &call.limit, call.tokens) {
                Ok(settled) => (settled.settlement.reply(call.units), settled.write),
                Err(_) => return Reply::Error(format!("ERR {GCRA_OVERFLOW}")),
            },
            GcraOp::Refund => {
                let settled = refund(stored, clock, &call.limit, call.tokens);
                (settled.settlement.reply(call.units), settled.write)
            }
        };
        match write {
            Some(Write::Store(charge)) => {
                self.keys.insert(key, (charge.bucket, charge.expires_at));
            }
            Some(Write::Delete) => {
                self.keys.remove(&key);
            }
            None => {}
        }
        Reply::Bucket(reply)
    }

    /// The key as a look at `clock` sees it (expired keys are gone).
    fn seen(&self, key: &str, clock: Millis) -> Option<(Bucket, Millis)> {
        self.keys.get(key).copied().filter(|&(_, at)| clock <= at)
    }
}

/// The embedded twin's key against the model's: the same bucket, byte for
/// byte, and the same expiry.
fn same_key(twin: &EmbeddedTwin, module: &Module, key: &str, clock: Millis) -> Result<(), String> {
    let stored = twin.bucket(key)?;
    let expected = module.seen(key, clock);
    let twin_view = stored.map(|b| (b.at, b.period, b.level, twin.expires(key)));
    let model_view = expected.map(|(b, at)| (b.at(), b.period(), b.level(), Some(at)));
    if twin_view != model_view {
        return Err(format!(
            "key {key} at {clock}: the twin holds {twin_view:?}, the module {model_view:?}"
        ));
    }
    if let (Some(value), Some((bucket, _))) = (twin.value(key), expected) {
        let encoded = TwinBucket {
            at: bucket.at(),
            period: bucket.period(),
            level: bucket.level(),
        }
        .encode();
        if value != encoded {
            return Err(format!("key {key}: bytes {value:?}, expected {encoded:?}"));
        }
    }
    Ok(())
}

// Random calls -----------------------------------------------------------------

/// A limit in the module's terms: `max_burst count period_ms`.
#[derive(Clone, Copy, Debug)]
struct Limit {
    max_burst: u64,
    count: u64,
    period: u64,
}

/// Small limits, as most keys have: a few tokens, periods of a second or
/// a minute, fractional ones, and the shortest.
fn small_limit() -> impl Strategy<Value = Limit> {
    (
        0u64..6,
        1u64..12,
        prop_oneof![
            3 => Just(1000u64),
            1 => Just(60_000u64),
            1 => Just(1u64),
            1 => Just(500u64),
            2 => 1u64..5_000,
        ],
    )
        .prop_map(|(max_burst, count, period)| Limit {
            max_burst,
            count,
            period,
        })
}

/// Any limit within the bounds, often at them: the capacity at or near
/// 9e15, counts up to 9e15, the longest period.
fn big_limit() -> impl Strategy<Value = Limit> {
    (
        prop_oneof![
            Just(1u64),
            Just(1000u64),
            Just(MAX_PERIOD),
            1u64..=MAX_PERIOD,
            1u64..100_000,
        ],
        prop_oneof![Just(0u64), 0u64..3, 0u64..1_000_000],
        prop_oneof![
            Just(MAX_EXACT),
            MAX_EXACT - 1000..=MAX_EXACT,
            1u64..=MAX_EXACT,
            1u64..1_000_000,
        ],
    )
        .prop_map(|(period, slack, count)| {
            let most = MAX_EXACT / period;
            let burst = most - slack.min(most - 1);
            Limit {
                max_burst: burst - 1,
                count,
                period,
            }
        })
}

/// A request's tokens, chosen against its limit's burst.
#[derive(Clone, Copy, Debug)]
enum Tokens {
    /// No TOKENS: 1.
    Default,
    Exactly(u64),
    /// `max_burst + 1 + d`, within 0..=MAX_EXACT (above the burst: never fits).
    AroundBurst(i64),
}

fn tokens() -> impl Strategy<Value = Tokens> {
    prop_oneof![
        6 => Just(Tokens::Default),
        2 => Just(Tokens::Exactly(1)),
        2 => Just(Tokens::Exactly(0)),
        2 => (0u64..10).prop_map(Tokens::Exactly),
        1 => (-3i64..3).prop_map(Tokens::AroundBurst),
        1 => prop_oneof![Just(MAX_EXACT), 0..=MAX_EXACT].prop_map(Tokens::Exactly),
    ]
}

/// Seconds as a user writes them for `ms` milliseconds, in one of the
/// spellings the module reads.
fn period_word(ms: u64, style: u8) -> String {
    let (seconds, fraction) = (ms / 1000, ms % 1000);
    match style % 3 {
        0 if fraction == 0 => seconds.to_string(),
        0 => format!("{seconds}.{fraction:03}")
            .trim_end_matches('0')
            .to_string(),
        1 => format!("{seconds}.{fraction:03}"),
        _ => format!("{seconds}.{fraction:03}000"),
    }
}

#[derive(Clone, Debug)]
struct Step {
    /// The clock moves by this many ms first (back if negative).
    tick: i64,
    key: usize,
    tokens: Tokens,
    ms: bool,
    /// A request, or a settlement (CHARGE, REFUND).
    op: GcraOp,
    /// How the words are spelled: the period's style, the options' order
    /// and case.
    spelling: u8,
}

fn step() -> impl Strategy<Value = Step> {
    (
        prop_oneof![
            4 => 0i64..50,
            3 => 0i64..3_000,
            1 => -5_000i64..0,
            1 => 0i64..86_400_000,
            1 => Just(0i64),
        ],
        0usize..3,
        tokens(),
        any::<bool>(),
        prop_oneof![
            6 => Just(GcraOp::Request),
            2 => Just(GcraOp::Charge),
            1 => Just(GcraOp::Refund),
        ],
        any::<u8>(),
    )
        .prop_map(|(tick, key, tokens, ms, op, spelling)| Step {
            tick,
            key,
            tokens,
            ms,
            op,
            spelling,
        })
}

/// Runs of steps under one limit each: the limit changes between runs on
/// live keys (redis-cell #54).
fn runs() -> impl Strategy<Value = (Millis, Vec<(Limit, Vec<Step>)>)> {
    (
        prop_oneof![4 => Just(T0), 1 => Just(LATEST - 100_000)],
        proptest::collection::vec(
            (
                prop_oneof![3 => small_limit(), 1 => big_limit()],
                proptest::collection::vec(step(), 1..10),
            ),
            1..8,
        ),
    )
}

const KEYS: [&str; 3] = ["k", "b", "c\0d"];

fn words(limit: &Limit, step: &Step) -> Vec<String> {
    let mut words = strings(&["RATELIMIT.GCRA", KEYS[step.key]]);
    words.push(limit.max_burst.to_string());
    words.push(limit.count.to_string());
    words.push(period_word(limit.period, step.spelling));
    let burst = limit.max_burst + 1;
    let tokens = match step.tokens {
        Tokens::Default => None,
        Tokens::Exactly(n) => Some(n),
        Tokens::AroundBurst(d) => Some((burst as i64 + d).clamp(0, MAX_EXACT as i64) as u64),
    };
    let lower = step.spelling & 8 != 0;
    let mut options = vec![];
    if let Some(n) = tokens {
        options.push(vec![
            if lower { "tokens" } else { "TOKENS" }.to_string(),
            n.to_string(),
        ]);
    }
    if step.ms {
        options.push(vec![if lower { "ms" } else { "MS" }.to_string()]);
    }
    match step.op {
        GcraOp::Request => {}
        GcraOp::Charge => options.push(vec![if lower { "charge" } else { "CHARGE" }.to_string()]),
        GcraOp::Refund => options.push(vec![if lower { "Refund" } else { "REFUND" }.to_string()]),
    }
    if step.spelling & 4 != 0 {
        options.reverse();
    }
    if step.spelling & 16 != 0 && !options.is_empty() {
        options.rotate_left(1);
    }
    words.extend(options.into_iter().flatten());
    words
}

fn run_steps(base: Millis, runs: &[(Limit, Vec<Step>)]) -> Result<(), String> {
    let twin = EmbeddedTwin::new();
    let mut module = Module::default();
    let mut clock = base;
    for (limit, steps) in runs {
        for step in steps {
            clock = (clock + step.tick).max(1);
            twin.set_clock(clock);
            let words = words(limit, step);
            let expected = module.call(&words, clock);
            let got = twin.send(&words).expect("a twin operation");
            if got != expected {
                return Err(format!(
                    "{words:?} at {clock}: the twin answered {got:?}, the module {expected:?}"
                ));
            }
            for key in KEYS {
                same_key(&twin, &module, key, clock)
                    .map_err(|e| format!("after {words:?}: {e}"))?;
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_500))]

    /// Random calls on three keys: the twin's reply, stored bucket and
    /// expiry are the module's after every call.
    #[test]
    fn the_twin_decides_as_the_core((base, runs) in runs()) {
        let outcome = run_steps(base, &runs);
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}

// Random words --------------------------------------------------------------------

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "5",
    "15",
    "30",
    "-1",
    "-0",
    "01",
    "+1",
    "x",
    "",
    "1.5",
    "1e3",
    " 1",
    "1\0",
    "8999999999999999",
    "9000000000000000",
    "9000000000000001",
    "9007199254740993",
    "99999999999999999999",
    "9223372036854775808",
    "-9223372036854775809",
];

const PERIODS: &[&str] = &[
    "60",
    "1",
    "0.5",
    "0.001",
    "1.25",
    "1.2500",
    "0.0010",
    "7776000",
    "7776000.000",
    "0.0001",
    "1.0005",
    "1e3",
    ".5",
    "5.",
    "x",
    "",
    "7776000.001",
    "7776001",
    "+1",
    "-1",
    "0",
    "0.0",
    "00.5",
    "01",
    "1.5x",
    "99999999999999999999",
    "1.",
    "1..5",
];

const OPTIONS: &[&str] = &[
    "TOKENS", "tokens", "Tokens", "MS", "ms", "mS", "COST", "TOKEN", "MSS", "X\0Y", "X\r\nY", "",
    "CHARGE", "refund", "REFUND", "Charge", "CHARGES", "REFUNDS",
];

fn any_word(pool: &'static [&'static str]) -> impl Strategy<Value = String> {
    proptest::sample::select(pool).prop_map(str::to_string)
}

/// `RATELIMIT.GCRA k` and 0 to 9 words: the first three from the pools of
/// each argument, the rest options and numbers.
fn any_words() -> impl Strategy<Value = Vec<String>> {
    (
        any_word(NUMBERS),
        any_word(NUMBERS),
        any_word(PERIODS),
        proptest::collection::vec(prop_oneof![any_word(OPTIONS), any_word(NUMBERS)], 0..5),
        0usize..4,
    )
        .prop_map(|(max_burst, count, period, rest, cut)| {
            let mut words = strings(&["RATELIMIT.GCRA", "k", &max_burst, &count, &period]);
            words.extend(rest);
            // Sometimes too few words.
            if cut == 0 {
                words.truncate(2 + max_burst.len() % 3);
            }
            words
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4_000))]

    /// Any words: the module's error for the first thing wrong, word for
    /// word, or its reply.
    #[test]
    fn any_words_get_the_modules_answer(calls in proptest::collection::vec((any_words(), 0i64..500), 1..12)) {
        let twin = EmbeddedTwin::new();
        let mut module = Module::default();
        let mut clock = T0;
        for (words, tick) in calls {
            clock += tick;
            twin.set_clock(clock);
            let expected = module.call(&words, clock);
            let got = twin.send(&words).expect("a twin operation");
            prop_assert_eq!(&got, &expected, "{:?}", words);
            let same = same_key(&twin, &module, "k", clock);
            prop_assert!(same.is_ok(), "{}", same.unwrap_err());
        }
    }
}

/// The cases that pin what the random ones reach: the issue's example, a
/// question, a request larger than the bucket, a clock stepping back, a
/// changed period, and the largest numbers.
#[test]
fn chosen_cases_in_process() {
    let twin = EmbeddedTwin::new();
    let mut module = Module::default();
    let mut at = |words: &[&str], clock: Millis| -> Reply {
        twin.set_clock(clock);
        let words = strings(words);
        let expected = module.call(&words, clock);
        let got = twin.send(&words).expect("gcra");
        assert_eq!(got, expected, "{words:?} at {clock}");
        for key in ["user123", "q", "edge", "edge2", "debt", "wide"] {
            same_key(&twin, &module, key, clock).unwrap();
        }
        got
    };
    for k in 1..=16 {
        let reply = at(&["RATELIMIT.GCRA", "user123", "15", "30", "60"], T0);
        assert_eq!(reply, Reply::Bucket([0, 16, 16 - k, -1, 2 * k]));
    }
    for _ in 17..=20 {
        let reply = at(&["RATELIMIT.GCRA", "user123", "15", "30", "60"], T0 + 1);
        assert_eq!(reply, Reply::Bucket([1, 16, 0, 2, 32]));
    }
    let ms = at(
        &["RATELIMIT.GCRA", "user123", "15", "30", "60", "MS"],
        T0 + 1,
    );
    assert_eq!(ms, Reply::Bucket([1, 16, 0, 1999, 31_999]));
    // A question on a missing key, a request larger than the bucket.
    let fresh = at(&["RATELIMIT.GCRA", "q", "5", "1", "1", "TOKENS", "0"], T0);
    assert_eq!(fresh, Reply::Bucket([0, 6, 6, -1, 0]));
    assert!(!twin.exists("q"));
    let never = at(&["RATELIMIT.GCRA", "q", "2", "1", "1", "TOKENS", "4"], T0);
    assert_eq!(never, Reply::Bucket([1, 3, 3, -1, 0]));
    // The clock stepping back frees nothing; a changed period counts a
    // partly drained token whole.
    at(&["RATELIMIT.GCRA", "q", "0", "1", "1"], T0);
    let back = at(&["RATELIMIT.GCRA", "q", "0", "1", "1", "MS"], T0 - 5000);
    assert_eq!(back, Reply::Bucket([1, 1, 0, 1000, 1000]));
    at(
        &["RATELIMIT.GCRA", "q", "15", "10", "20", "TOKENS", "3"],
        T0 + 10,
    );
    at(
        &[
            "RATELIMIT.GCRA",
            "q",
            "15",
            "3000",
            "60",
            "TOKENS",
            "0",
            "MS",
        ],
        T0 + 40,
    );
    // The largest numbers: the capacity at 9e15 with the longest period,
    // a count of 9e15, TOKENS of 9e15, near the latest time a bucket holds.
    let widest = (MAX_EXACT / MAX_PERIOD - 1).to_string();
    let widest = widest.as_str();
    for (words, clock) in [
        (
            vec!["RATELIMIT.GCRA", "edge", widest, "1", "7776000"],
            LATEST - 10,
        ),
        (
            vec!["RATELIMIT.GCRA", "edge", widest, "1", "7776000", "MS"],
            LATEST + 1,
        ),
        (
            vec!["RATELIMIT.GCRA", "edge", widest, "1", "7776000", "MS"],
            LATEST + 10,
        ),
        (
            vec![
                "RATELIMIT.GCRA",
                "edge",
                "8999999999999999",
                "9000000000000000",
                "0.001",
                "TOKENS",
                "9000000000000000",
            ],
            T0,
        ),
        (
            vec![
                "RATELIMIT.GCRA",
                "edge",
                "8999999999999999",
                "1",
                "0.001",
                "TOKENS",
                "1",
            ],
            T0 + 2,
        ),
    ] {
        at(&words, clock);
    }
    // A full bucket of 9e15 units, drained at 9e15 a ms, or at 1.
    let max = [
        "RATELIMIT.GCRA",
        "edge2",
        "8999999999999999",
        "9000000000000000",
        "0.001",
    ];
    let full = at(&[&max[..], &["TOKENS", "9000000000000000"]].concat(), T0);
    assert_eq!(full, Reply::Bucket([0, MAX_EXACT as i64, 0, -1, 1]));
    let bucket = twin.bucket("edge2").unwrap().expect("a bucket");
    assert_eq!((bucket.at, bucket.period, bucket.level), (T0, 1, MAX_EXACT));
    let slow = [
        "RATELIMIT.GCRA",
        "edge2",
        "8999999999999999",
        "1",
        "0.001",
        "TOKENS",
        "1",
        "MS",
    ];
    // A ms at 1 unit a ms frees one unit: a token of one unit fits, and
    // the bucket is full again for 9e15 ms.
    let slow = at(&slow, T0 + 1);
    assert_eq!(
        slow,
        Reply::Bucket([0, MAX_EXACT as i64, 0, -1, MAX_EXACT as i64])
    );
    // Full: a wait of one unit, 1/9e15 ms (0 s as redis-cell rounds it).
    let full = Reply::Bucket([1, MAX_EXACT as i64, 0, 0, 1]);
    assert_eq!(at(&max, T0 + 1), full);
    // A ms at 9e15 units a ms empties it.
    let empty = Reply::Bucket([0, MAX_EXACT as i64, MAX_EXACT as i64 - 1, -1, 0]);
    assert_eq!(at(&max, T0 + 2), empty);
    // Settlements (issue 27): a reservation of 2, then 5 more charged past
    // full: 3 tokens over, a debt that drains at the rate.
    let per_second = ["RATELIMIT.GCRA", "debt", "3", "1", "1"];
    let with = |extra: &[&'static str]| [&per_second[..], extra].concat();
    assert_eq!(
        at(&with(&["TOKENS", "2", "MS"]), T0),
        Reply::Bucket([0, 4, 2, -1, 2000])
    );
    assert_eq!(
        at(&with(&["CHARGE", "TOKENS", "5", "MS"]), T0),
        Reply::Bucket([3, 4, 0, 4000, 7000])
    );
    assert_eq!(
        at(&with(&["MS"]), T0 + 2500),
        Reply::Bucket([1, 4, 0, 1500, 4500])
    );
    // TOKENS 0 on an over-full bucket is limited, its wait the excess.
    assert_eq!(
        at(&with(&["TOKENS", "0", "MS"]), T0 + 2500),
        Reply::Bucket([1, 4, 0, 500, 4500])
    );
    assert_eq!(
        at(&with(&["TOKENS", "0", "ms", "charge"]), T0 + 1000),
        Reply::Bucket([2, 4, 0, 3000, 6000])
    );
    // A smaller burst keeps the debt as it is; another period counts it in
    // whole tokens.
    at(
        &["RATELIMIT.GCRA", "debt", "0", "1", "1", "TOKENS", "0"],
        T0 + 1000,
    );
    at(
        &[
            "RATELIMIT.GCRA",
            "debt",
            "0",
            "1",
            "0.7",
            "TOKENS",
            "0",
            "MS",
        ],
        T0 + 1400,
    );
    // A refund takes back at most what is held; emptied, the key goes.
    assert_eq!(
        at(&with(&["REFUND", "TOKENS", "4", "MS"]), T0 + 1000),
        Reply::Bucket([0, 4, 2, -1, 2000])
    );
    assert_eq!(
        at(&with(&["Refund", "TOKENS", "0"]), T0 + 1000),
        Reply::Bucket([0, 4, 2, -1, 2])
    );
    assert_eq!(
        at(&with(&["REFUND", "TOKENS", "100"]), T0 + 1000),
        Reply::Bucket([0, 4, 4, -1, 0])
    );
    assert!(!twin.exists("debt"));
    assert_eq!(
        at(&with(&["REFUND"]), T0 + 1000),
        Reply::Bucket([0, 4, 4, -1, 0])
    );
    assert!(!twin.exists("debt"));
    // At the exact bound: the most a bucket of the longest period holds,
    // then one more refused; read under a short period, capped in whole
    // tokens at what a bucket of that period holds.
    let most = (MAX_EXACT / MAX_PERIOD).to_string();
    let wide = ["RATELIMIT.GCRA", "wide", "0", "1", "7776000"];
    at(&[&wide[..], &["TOKENS", &most, "CHARGE"]].concat(), T0);
    let refused = at(&[&wide[..], &["CHARGE"]].concat(), T0);
    assert!(matches!(refused, Reply::Error(_)), "{refused:?}");
    at(
        &[
            "RATELIMIT.GCRA",
            "wide",
            "0",
            "1",
            "0.001",
            "TOKENS",
            "0",
            "MS",
        ],
        T0,
    );
    at(
        &[
            "RATELIMIT.GCRA",
            "wide",
            "0",
            "3",
            "0.011",
            "CHARGE",
            "TOKENS",
            "5",
        ],
        T0 + 7,
    );
    at(
        &[
            "RATELIMIT.GCRA",
            "wide",
            "0",
            "3",
            "0.007",
            "TOKENS",
            "0",
            "MS",
        ],
        T0 + 9,
    );
}

// On real servers -------------------------------------------------------------------

/// A server with the module, and one without it where the twin is loaded
/// in each form (FCALL, EVALSHA, the least-privilege user).
struct Servers {
    _module_server: Server,
    twin_server: Server,
    module: Caller,
    twins: Vec<Caller>,
}

fn servers() -> Servers {
    let (module_server, module) = Backend::Module.start(&[]);
    let twin_server = Server::start_without_module(&[]);
    let twins = TWINS.iter().map(|b| b.prepare(&twin_server)).collect();
    Servers {
        _module_server: module_server,
        twin_server,
        module,
        twins,
    }
}

/// Every malformed call of tests/gcra.rs, in RATELIMIT.GCRA's spelling
/// (CL.THROTTLE's quantity as TOKENS; GCRA's `MS` is an option here), and
/// more: which check comes first, odd words, the arity as FCALL and
/// EVALSHA count it. The module's error, which is the one given, and the
/// twin's in each form are the same; nothing changes anywhere.
#[test]
fn malformed_calls_get_the_modules_errors() {
    let servers = servers();
    let period = "ERR period must be a number of seconds from 0.001 to 7776000 (90 days), in whole milliseconds";
    let max_burst = "ERR max_burst must be an integer from 0 to 8999999999999999";
    let count = "ERR count must be an integer from 1 to 9000000000000000";
    let capacity = "ERR max_burst + 1 times the period in milliseconds is above 9000000000000000: lower max_burst or the period";
    let tokens =
        "ERR TOKENS must be an integer from 0 to 9000000000000000 (0 asks without charging)";
    let both = "ERR CHARGE and REFUND cannot both be given: a call charges or refunds";
    let overflow = "ERR this key would hold more than 9000000000000000 token-milliseconds (its tokens \
                    times the period in milliseconds, the most a bucket holds exactly): nothing was charged";
    let mut cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["RATELIMIT.GCRA", "k", "5", "1"], ARITY),
        (vec!["RATELIMIT.GCRA", "k"], ARITY),
        (vec!["RATELIMIT.GCRA", "k", "5", "0", "60"], count),
        (
            vec!["RATELIMIT.GCRA", "k", "5", "1", "60", "TOKENS", "-1"],
            tokens,
        ),
        (
            vec!["RATELIMIT.GCRA", "k", "5", "1", "60", "TOKENS", "x"],
            tokens,
        ),
        (
            vec!["RATELIMIT.GCRA", "k", "5", "1", "60", "TOKENS"],
            "ERR syntax error: TOKENS needs a value",
        ),
        (
            vec!["RATELIMIT.GCRA", "k", "5", "1", "60", "MS", "ms"],
            "ERR MS given more than once",
        ),
        (
            vec!["RATELIMIT.GCRA", "k", "5", "1", "60", "COST", "1"],
            "ERR unknown option 'COST' (the options are TOKENS n, MS, CHARGE and REFUND)",
        ),
        (
            vec!["RATELIMIT.GCRA", "k", "9000000000000", "1", "1"],
            capacity,
        ),
        // Beyond tests/gcra.rs: the order of the checks, and odd words.
        (
            vec![
                "RATELIMIT.GCRA",
                "k",
                "5",
                "1",
                "60",
                "TOKENS",
                "1",
                "TOKENS",
                "2",
            ],
            "ERR TOKENS given more than once",
        ),
        (
            vec![
                "RATELIMIT.GCRA",
                "k",
                "5",
                "1",
                "60",
                "TOKENS",
                "1",
                "TOKENS",
            ],
            "ERR syntax error: TOKENS needs a value",
        ),
        (
            vec!["RATELIMIT.GCRA", "k", "x", "x", "x", "MS", "MS"],
            "ERR MS given more than once",
        ),
        (
            vec!["RATELIMIT.GCRA", "k", "x", "0", "0", "TOKENS", "x"],
            max_burst,
        ),
        (
            vec!["RATELIMIT.GCRA", "k", "1", "0", "0", "TOKENS", "x"],
            count,
        ),
        (
            vec!["RATELIMIT.GCRA", "k", "1", "1", "0", "TOKENS", "x"],
            period,
        ),
        (
            vec![
                "RATELIMIT.GCRA",
                "k",
                "8999999999999999",
                "1",
                "0.002",
                "TOKENS",
                "x",
            ],
            capacity,
        ),
        (
            vec![
                "RATELIMIT.GCRA",
                "k",
                "5",
                "1",
                "60",
                "TOKENS",
                "9000000000000001",
            ],
            tokens,
        ),
        (
            vec![
                "RATELIMIT.GCRA",
                "k",
                "5",
                "1",
                "60",
                "tokens",
                "99999999999999999999",
            ],
            tokens,
        ),
        (
            vec!["RATELIMIT.GCRA", "k", "5", "1", "60", "X\0Y"],
            "ERR unknown option 'X Y' (the options are TOKENS n, MS, CHARGE and REFUND)",
        ),
        (
            vec!["RATELIMIT.GCRA", "k", "5", "1", "60", "a\r\nb"],
            "ERR unknown option 'a  b' (the options are TOKENS n, MS, CHARGE and REFUND)",
        ),
        // The settlements' options: each once, not both, read before the
        // limit's words.
        (
            vec!["RATELIMIT.GCRA", "k", "5", "1", "60", "CHARGE", "refund"],
            both,
        ),
        (
            vec![
                "RATELIMIT.GCRA",
                "k",
                "x",
                "0",
                "0",
                "Refund",
                "TOKENS",
                "x",
                "CHARGE",
            ],
            both,
        ),
        (
            vec![
                "RATELIMIT.GCRA",
                "k",
                "x",
                "0",
                "0",
                "CHARGE",
                "REFUND",
                "charge",
            ],
            "ERR CHARGE given more than once",
        ),
        (
            vec![
                "RATELIMIT.GCRA",
                "k",
                "5",
                "1",
                "60",
                "refund",
                "REFUND",
                "TOKENS",
            ],
            "ERR REFUND given more than once",
        ),
        (
            vec![
                "RATELIMIT.GCRA",
                "k",
                "5",
                "1",
                "60",
                "CHARGE",
                "REFUND",
                "TOKENS",
            ],
            "ERR syntax error: TOKENS needs a value",
        ),
        (
            vec!["RATELIMIT.GCRA", "k", "5", "1", "60", "CHARGES"],
            "ERR unknown option 'CHARGES' (the options are TOKENS n, MS, CHARGE and REFUND)",
        ),
        (
            vec!["RATELIMIT.GCRA", "k", "x", "1", "60", "CHARGE"],
            max_burst,
        ),
        (
            vec![
                "RATELIMIT.GCRA",
                "k",
                "5",
                "1",
                "60",
                "REFUND",
                "TOKENS",
                "-1",
            ],
            tokens,
        ),
        // A charge past what a bucket holds exactly is refused whole.
        (
            vec![
                "RATELIMIT.GCRA",
                "k",
                "5",
                "1",
                "60",
                "TOKENS",
                "150000000001",
                "CHARGE",
            ],
            overflow,
        ),
        (
            vec![
                "RATELIMIT.GCRA",
                "k",
                "5",
                "1",
                "0.001",
                "TOKENS",
                "9000000000000000",
                "CHARGE",
            ],
            overflow,
        ),
        (vec!["RATELIMIT.GCRA", "k", "5", "1", "01"], period),
        (vec!["RATELIMIT.GCRA", "k", "5", "1", "00.5"], period),
        (vec!["RATELIMIT.GCRA", "k", "5", "1", "1..5"], period),
        (vec!["RATELIMIT.GCRA", "k", "01", "1", "60"], max_burst),
        (vec!["RATELIMIT.GCRA", "k", "5", "01", "60"], count),
    ];
    for bad in [
        "0", "-1", "0.0001", "1.0005", "1e3", ".5", "5.", "x", "", "7776001", "+1",
    ] {
        cases.push((vec!["RATELIMIT.GCRA", "k", "5", "1", bad], period));
    }
    for bad in ["-1", "x", "1.5", "9000000000000000", "99999999999999999999"] {
        cases.push((vec!["RATELIMIT.GCRA", "k", bad, "1", "60"], max_burst));
    }
    for bad in ["0", "-1", "x", "9000000000000001"] {
        cases.push((vec!["RATELIMIT.GCRA", "k", "5", bad, "60"], count));
    }
    let mut module_con = servers.module.connect();
    let mut admin = servers.twin_server.connect();
    for (caller, con) in [
        (&servers.module, &mut module_con),
        (&servers.twins[0], &mut admin),
    ] {
        caller.run::<Vec<i64>>(con, &["RATELIMIT.GCRA", "k", "5", "1", "60"]);
    }
    let module_before = all_dumps_and_expiries(&mut module_con);
    let twin_before = all_dumps_and_expiries(&mut admin);
    for (words, expected) in &cases {
        assert_eq!(
            servers.module.error(&mut module_con, words),
            *expected,
            "module: {words:?}"
        );
        for twin in &servers.twins {
            let mut con = twin.connect();
            assert_eq!(
                twin.error(&mut con, words),
                *expected,
                "{}: {words:?}",
                twin.backend.name()
            );
        }
    }
    // FCALL's and EVALSHA's own numkeys: exactly one key, as the module's
    // key is its argument 1.
    let sha: String = run(&mut admin, &["SCRIPT", "LOAD", &twin_script()]);
    for words in [
        vec!["FCALL", "ratelimit_gcra", "0", "k", "5", "1", "60"],
        vec!["FCALL", "ratelimit_gcra", "2", "k", "j", "5", "1", "60"],
        vec!["FCALL", "ratelimit_gcra", "1", "k", "5", "1"],
        vec!["FCALL", "ratelimit_gcra", "1", "k"],
        vec!["EVALSHA", &sha, "0", "gcra", "k", "5", "1", "60"],
        vec!["EVALSHA", &sha, "2", "k", "j", "gcra", "5", "1", "60"],
        vec!["EVALSHA", &sha, "1", "k", "gcra", "5", "1"],
        vec!["EVALSHA", &sha, "1", "k", "gcra"],
    ] {
        assert_eq!(error(&mut admin, &words), ARITY, "{words:?}");
    }
    assert_eq!(all_dumps_and_expiries(&mut module_con), module_before);
    assert_eq!(all_dumps_and_expiries(&mut admin), twin_before);
    eprintln!("{} malformed calls refused alike", cases.len());
}

/// The calls in one pipeline, each reply.
fn pipelined(caller: &Caller, con: &mut Connection, calls: &[&[&str]]) -> Vec<Vec<i64>> {
    let mut pipe = redis::pipe();
    for call in calls {
        pipe.add_command(caller.command(call));
    }
    pipe.query(con).expect("the pipeline")
}

/// docs/gcra.md's example, twenty calls within a second, by FCALL, by
/// EVALSHA and as the least-privilege user; and with MS.
#[test]
fn the_issue_example_on_every_form() {
    let servers = servers();
    let mut expected: Vec<Vec<i64>> = (1..=16).map(|k| vec![0, 16, 16 - k, -1, 2 * k]).collect();
    expected.extend((17..=20).map(|_| vec![1, 16, 0, 2, 32]));
    for caller in std::iter::once(&servers.module).chain(&servers.twins) {
        let mut con = caller.connect();
        let name = caller.backend.name();
        let key = format!("user123:{name}");
        let call = ["RATELIMIT.GCRA", &key, "15", "30", "60"];
        assert_eq!(
            pipelined(caller, &mut con, &[&call[..]; 20]),
            expected,
            "{name}"
        );
        let key = format!("user126:{name}");
        let ms = pipelined(
            caller,
            &mut con,
            &[&["RATELIMIT.GCRA", &key, "15", "30", "60", "MS"][..]; 17],
        );
        assert_eq!(ms[0], [0, 16, 15, -1, 2000], "{name}");
        let [limited, burst, remaining, retry, reset] = ms[16][..] else {
            panic!("{:?}", ms[16]);
        };
        assert_eq!((limited, burst, remaining), (1, 16, 0), "{name}");
        assert!((1000..=2000).contains(&retry), "{name}: {retry}");
        assert_eq!(reset - retry, 30_000, "{name}: {:?}", ms[16]);
    }
}

fn set_bytes(con: &mut Connection, key: &str, value: &[u8]) {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg("PX")
        .arg(86_400_000)
        .query::<()>(con)
        .expect("SET");
}

/// A paged sliding-window log (more than a small value's 256 bytes of
/// entries), a long way past the 22 bytes gcra reads.
fn paged_log(now: i64) -> Vec<u8> {
    let log = TwinLog {
        window: 86_400_000,
        entries: (0..2000).map(|i| (now - 3_600_000 + i * 100, 1)).collect(),
        blocked_until: 0,
    };
    let value = twin_format::canonical(&log);
    assert_eq!(value[2], 3, "paged");
    value
}

/// A bucket and a log never mix, on the twin as on the module: a
/// sliding-window operation on a bucket, and gcra on a log (small, blocked,
/// paged, release 0.3's) or on any other value, answer WRONGTYPE, and
/// nothing changes.
#[test]
fn buckets_and_logs_answer_wrongtype_both_ways() {
    let servers = servers();
    let mut module_con = servers.module.connect();
    let mut admin = servers.twin_server.connect();
    let now = server_clock_ms(&mut admin);
    for (caller, con) in [
        (&servers.module, &mut module_con),
        (&servers.twins[0], &mut admin),
    ] {
        caller.run::<Vec<i64>>(con, &["RATELIMIT.GCRA", "bucket", "5", "1", "60"]);
        caller.run::<Vec<i64>>(con, &["RATELIMIT.CHECK", "log", "60000", "5"]);
        caller.run::<Vec<i64>>(
            con,
            &[
                "RATELIMIT.CHECK",
                "blocked",
                "60000",
                "1",
                "COST",
                "1",
                "BLOCK",
                "60000",
            ],
        );
        caller.run::<Vec<i64>>(
            con,
            &["RATELIMIT.CHECK", "blocked", "60000", "1", "BLOCK", "60000"],
        );
        run::<()>(con, &["SET", "s", "1559260935732768000"]);
        run::<()>(con, &["SET", "empty", ""]);
        run::<()>(con, &["RPUSH", "list", "x"]);
        run::<()>(con, &["HSET", "hash", "f", "v"]);
    }
    let legacy = twin_format::legacy(&TwinLog {
        window: 60_000,
        entries: vec![(now - 10, 1)],
        blocked_until: 0,
    });
    set_bytes(&mut admin, "paged", &paged_log(now));
    set_bytes(&mut admin, "legacy", &legacy);
    // A log value of exactly a bucket's length.
    let small = twin_format::canonical(&TwinLog {
        window: 60_000,
        entries: (0..7).map(|i| (now - 100 + i, 1)).collect(),
        blocked_until: 0,
    });
    assert_eq!((small.len(), small[2]), (21, 4));
    set_bytes(&mut admin, "small21", &small);
    let module_before = all_dumps_and_expiries(&mut module_con);
    let twin_before = all_dumps_and_expiries(&mut admin);
    let on_bucket: [&[&str]; 9] = [
        &["RATELIMIT.CHECK", "bucket", "1000", "5"],
        &["RATELIMIT.PEEK", "bucket", "1000", "5"],
        &["RATELIMIT.UNDO", "bucket"],
        &["RATELIMIT.UNBLOCK", "bucket"],
        &[
            "RATELIMIT.MCHECK",
            "2",
            "log",
            "bucket",
            "1",
            "1000",
            "5",
            "1",
            "1000",
            "5",
        ],
        &["RATELIMIT.MPEEK", "1", "bucket", "1", "1000", "5"],
        &["RATELIMIT.MUNDO", "2", "log", "bucket"],
        &["RATELIMIT.CHARGE", "bucket", "1000", "5", "COST", "9"],
        &[
            "RATELIMIT.MCHARGE",
            "2",
            "log",
            "bucket",
            "1",
            "1000",
            "5",
            "1",
            "1000",
            "5",
        ],
    ];
    let gcra_on = |key: &'static str| -> Vec<&'static str> {
        vec!["RATELIMIT.GCRA", key, "5", "1", "60", "TOKENS", "0"]
    };
    let shared = ["log", "blocked", "s", "empty", "list", "hash"];
    for caller in std::iter::once(&servers.module).chain(&servers.twins) {
        let mut con = caller.connect();
        for words in on_bucket {
            assert_eq!(
                caller.error(&mut con, words),
                WRONGTYPE,
                "{}: {words:?}",
                caller.backend.name()
            );
        }
        let twin_only = ["paged", "legacy", "small21"];
        let keys: Vec<&str> = match caller.backend.is_twin() {
            true => shared.iter().chain(&twin_only).copied().collect(),
            false => shared.to_vec(),
        };
        for key in keys {
            assert_eq!(
                caller.error(&mut con, &gcra_on(key)),
                WRONGTYPE,
                "{}: gcra on {key}",
                caller.backend.name()
            );
            let charged = ["RATELIMIT.GCRA", key, "5", "1", "60"];
            assert_eq!(
                caller.error(&mut con, &charged),
                WRONGTYPE,
                "{}",
                caller.backend.name()
            );
        }
    }
    assert_eq!(all_dumps_and_expiries(&mut module_con), module_before);
    assert_eq!(all_dumps_and_expiries(&mut admin), twin_before);
}

/// TOKENS 0 on a missing key answers a full bucket and creates nothing; on
/// a bucket it changes nothing (its bytes and expiry, and a WATCH on it
/// holds), and neither does a limited call.
#[test]
fn a_question_and_a_limited_call_write_nothing() {
    let servers = servers();
    for caller in &servers.twins {
        let name = caller.backend.name();
        let (mut con, mut watcher) = (caller.connect(), servers.twin_server.connect());
        let fresh: Vec<i64> = caller.run(
            &mut con,
            &["RATELIMIT.GCRA", "fresh", "5", "1", "1", "TOKENS", "0"],
        );
        assert_eq!(fresh, [0, 6, 6, -1, 0], "{name}");
        let exists: i64 = run(&mut con, &["EXISTS", "fresh"]);
        assert_eq!(exists, 0, "{name}");
        let charged: Vec<i64> = caller.run(
            &mut con,
            &["RATELIMIT.GCRA", "k", "5", "1", "60", "TOKENS", "2"],
        );
        assert_eq!(charged[..4], [0, 6, 4, -1], "{name}");
        let before = all_dumps_and_expiries(&mut watcher);
        run::<()>(&mut watcher, &["WATCH", "k"]);
        let asked: Vec<i64> = caller.run(
            &mut con,
            &["RATELIMIT.GCRA", "k", "5", "1", "60", "TOKENS", "0"],
        );
        assert_eq!(asked[..4], [0, 6, 4, -1], "{name}");
        let limited: Vec<i64> = caller.run(
            &mut con,
            &["RATELIMIT.GCRA", "k", "5", "1", "60", "TOKENS", "5"],
        );
        assert_eq!(limited[..3], [1, 6, 4], "{name}");
        let never: Vec<i64> = caller.run(
            &mut con,
            &["RATELIMIT.GCRA", "k", "5", "1", "60", "TOKENS", "7"],
        );
        assert_eq!(never[..4], [1, 6, 4, -1], "{name}");
        run::<()>(&mut watcher, &["MULTI"]);
        run::<()>(&mut watcher, &["SET", "marker", "1"]);
        let exec: Value = run(&mut watcher, &["EXEC"]);
        assert_eq!(
            exec,
            Value::Array(vec![Value::Okay]),
            "{name}: the key was touched"
        );
        run::<i64>(&mut watcher, &["DEL", "marker"]);
        assert_eq!(all_dumps_and_expiries(&mut watcher), before, "{name}");
        run::<i64>(&mut watcher, &["DEL", "k"]);
    }
}

/// An allowed call stores the bucket (the twin's 21 bytes: the charge's
/// time, period and level) and sets the key to expire when it is empty
/// again, as the module does: the same expiry within the few ms between
/// the two calls.
#[test]
fn the_stored_bucket_and_its_expiry_match_the_modules() {
    let server = Server::start(&[]);
    let module = Backend::Module.prepare(&server);
    let fcall = Backend::Function.prepare(&server);
    let script = Backend::Script.prepare(&server);
    let mut con = server.connect();
    let limits: [&[&str]; 6] = [
        &["15", "30", "60"],
        &["0", "1", "0.5"],
        &["4", "3", "1", "TOKENS", "3"],
        &["9", "1", "90.5", "TOKENS", "4", "MS"],
        &["9999999", "1000", "60", "TOKENS", "2500"],
        &["0", "7", "3600.001"],
    ];
    for (i, limit) in limits.iter().enumerate() {
        for twin in [&fcall, &script] {
            let (m, t) = (format!("m{i}"), format!("t{i}:{}", twin.backend.name()));
            let mut calls: Vec<redis::Cmd> = vec![];
            for (caller, key) in [(&module, &m), (twin, &t)] {
                let mut words = vec!["RATELIMIT.GCRA", key.as_str()];
                words.extend(*limit);
                calls.push(caller.command(&words));
            }
            let before = server_clock_ms(&mut con);
            let mut pipe = redis::pipe();
            for call in &calls {
                pipe.add_command(call.clone());
            }
            let replies: Vec<Vec<i64>> = pipe.query(&mut con).expect("both calls");
            assert_eq!(replies[0][..3], replies[1][..3], "{limit:?}");
            assert!(
                (replies[0][4] - replies[1][4]).abs() <= 1,
                "{limit:?}: {replies:?}"
            );
            let expiries: Vec<i64> = [&m, &t]
                .iter()
                .map(|key| run(&mut con, &["PEXPIRETIME", key]))
                .collect();
            assert!(expiries[0] > before, "{limit:?}: {expiries:?}");
            assert!(
                (expiries[0] - expiries[1]).abs() <= 5,
                "{limit:?}: the module's key expires at {}, the twin's at {}",
                expiries[0],
                expiries[1]
            );
            let value: Vec<u8> = run(&mut con, &["GET", &t]);
            let bucket = TwinBucket::decode(&value).expect("a bucket");
            let count: i64 = limit[1].parse().unwrap();
            assert!((before..before + 1000).contains(&bucket.at), "{bucket:?}");
            assert_eq!(
                expiries[1],
                bucket.at + (bucket.level as i64 + count - 1) / count,
                "{limit:?}: {bucket:?}"
            );
            let kind: String = run(&mut con, &["TYPE", &t]);
            assert_eq!(kind, "string");
            run::<i64>(&mut con, &["DEL", &m]);
        }
    }
}

/// Values that start as a bucket does but are not one the twin writes:
/// refused with an error that names the key and DEL, nothing changed (the
/// bytes and the expiry); a sliding-window operation says WRONGTYPE, as
/// on any bucket.
#[test]
fn a_damaged_bucket_is_refused_naming_its_key() {
    let (server, fcall) = Backend::Function.start(&[]);
    let script = Backend::Script.prepare(&server);
    let mut con = server.connect();
    let now = server_clock_ms(&mut con);
    let good = TwinBucket {
        at: now,
        period: 60_000,
        level: 60_000,
    }
    .encode();
    let field = |at: i64, period: u64, level: u64| TwinBucket { at, period, level }.encode();
    let mut longer = good.clone();
    longer.push(0);
    let damaged: Vec<(&str, Vec<u8>)> = vec![
        ("magic", b"rl\x06".to_vec()),
        ("short", good[..20].to_vec()),
        ("long", longer),
        ("at0", field(0, 60_000, 60_000)),
        ("late", field(LATEST + 1, 60_000, 60_000)),
        ("period0", field(now, 0, 1)),
        ("period", field(now, MAX_PERIOD + 1, 1)),
        ("level0", field(now, 60_000, 0)),
        ("level", field(now, 60_000, MAX_EXACT + 1)),
        ("level56", field(now, 60_000, (1 << 56) - 1)),
        ("odd\nkey\0", field(now, 60_000, 0)),
    ];
    for (i, (key, value)) in damaged.iter().enumerate() {
        let mut set = redis::cmd("SET");
        set.arg(*key).arg(value);
        if i % 2 == 0 {
            set.arg("PX").arg(3_600_000);
        }
        set.query::<()>(&mut con).expect("SET");
    }
    let before = all_dumps_and_expiries(&mut con);
    for (key, _) in &damaged {
        let key: &str = key;
        let shown = key.replace(['\n', '\0'], " ");
        let expected = format!(
            "ERR key '{shown}' holds a damaged token bucket (a value that starts as the script \
             twin's buckets do, but is not one it writes): nothing was changed; DEL it to start \
             the bucket afresh"
        );
        for twin in [&fcall, &script] {
            for words in [
                vec!["RATELIMIT.GCRA", key, "5", "1", "60"],
                vec!["RATELIMIT.GCRA", key, "5", "1", "60", "TOKENS", "0", "MS"],
            ] {
                assert_eq!(
                    twin.error(&mut con, &words),
                    expected,
                    "{}",
                    twin.backend.name()
                );
            }
            assert_eq!(
                twin.error(&mut con, &["RATELIMIT.CHECK", key, "1000", "5"]),
                WRONGTYPE
            );
            // The arguments are read first, as the module reads them.
            assert_eq!(
                twin.error(&mut con, &["RATELIMIT.GCRA", key, "5", "0", "60"]),
                "ERR count must be an integer from 1 to 9000000000000000"
            );
        }
    }
    assert_eq!(all_dumps_and_expiries(&mut con), before, "nothing changed");
    // DEL starts the bucket afresh.
    run::<i64>(&mut con, &["DEL", "short"]);
    let fresh: Vec<i64> = fcall.run(&mut con, &["RATELIMIT.GCRA", "short", "5", "1", "60"]);
    assert_eq!(fresh[..4], [0, 6, 5, -1]);
}

/// The reply is an array of five integers in RESP2 and RESP3 alike, and
/// errors read the same.
#[test]
fn resp2_and_resp3_get_the_same_arrays() {
    let (_server, fcall) = Backend::Function.start(&[]);
    let script = Backend::Script.prepare(&_server);
    let expected = Value::Array([0, 2, 1, -1, 1].map(Value::Int).to_vec());
    for twin in [&fcall, &script] {
        for (resp, mut con) in [("RESP2", twin.connect()), ("RESP3", twin.connect_resp3())] {
            let key = format!("r:{resp}:{}", twin.backend.name());
            let reply: Value = twin.run(&mut con, &["RATELIMIT.GCRA", &key, "1", "1", "1"]);
            assert_eq!(reply, expected, "{resp} {}", twin.backend.name());
            let ms: Value = twin.run(
                &mut con,
                &["RATELIMIT.GCRA", &key, "1", "1", "1", "TOKENS", "2", "MS"],
            );
            let Value::Array(fields) = &ms else {
                panic!("{ms:?}");
            };
            assert_eq!(fields[..3], [1, 2, 1].map(Value::Int), "{resp}: {ms:?}");
            assert!(
                matches!(fields[3], Value::Int(1..=1000)),
                "{resp}: a token's wait: {ms:?}"
            );
            assert_eq!(
                twin.error(&mut con, &["RATELIMIT.GCRA", &key, "1", "1", "0"]),
                "ERR period must be a number of seconds from 0.001 to 7776000 (90 days), in whole milliseconds"
            );
        }
    }
}

/// A user whose ACL lacks TIME is told what to grant, as by the twin's
/// other operations; the words are read first, the key next.
#[test]
fn a_user_without_time_is_told_to_grant_it() {
    let (server, fcall) = Backend::Function.start(&[]);
    let mut admin = server.connect();
    let mut words = vec!["ACL", "SETUSER", "notime"];
    words.extend(
        USER_RULES
            .iter()
            .map(|r| if *r == ">app-secret" { ">x" } else { r }),
    );
    words.push("-time");
    let _: () = run(&mut admin, &words);
    let sha: String = run(&mut admin, &["SCRIPT", "LOAD", &twin_script()]);
    run::<()>(&mut admin, &["SET", "text", "hello"]);
    let mut con = redis::Client::open(format!("redis://notime:x@127.0.0.1:{}/", server.port))
        .and_then(|c| c.get_connection())
        .expect("a connection as notime");
    let noperm = "NOPERM this user may not run TIME, which the script twin needs to read the server's clock: \
                  grant it with ACL SETUSER <user> +time";
    for caller in [fcall.clone(), Caller::of(Backend::Script).with_sha(&sha)] {
        for (words, expected) in [
            (&["RATELIMIT.GCRA", "k", "15", "30", "60"][..], noperm),
            (
                &["RATELIMIT.GCRA", "k", "15", "30", "60", "TOKENS", "0"],
                noperm,
            ),
            (
                &["RATELIMIT.GCRA", "k", "15", "0", "60"],
                "ERR count must be an integer from 1 to 9000000000000000",
            ),
            (&["RATELIMIT.GCRA", "text", "15", "30", "60"], WRONGTYPE),
        ] {
            assert_eq!(
                caller.error(&mut con, words),
                expected,
                "{}: {words:?}",
                caller.backend.name()
            );
        }
    }
}
