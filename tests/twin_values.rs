//! The twin on values it did not write: random logs in each form the twin
//! reads (small, release 0.3's, paged), mutated (a byte changed, the value
//! cut or extended, a header field out of range, a varint too long), then
//! the same call on the mutated key and on a key holding what the mutation
//! means. A small value is read whole: it answers WRONGTYPE when its bytes
//! mean nothing, and else exactly what its meaning answers. A paged value
//! is checked in the parts a call reads: it answers WRONGTYPE, or what its
//! meaning answers, or (a change in a part the call did not read) what the
//! value before the change answers. Never a script error, and no other key
//! changes: in MCHECK and MCHARGE, a key beside a refused one keeps its bytes.

use harness::twin_format::{self, TwinLog};
use harness::{run, server_clock_ms, Backend, Caller, Random, Server};
use redis::{Connection, Value};

const HOUR: i64 = 3_600_000;
/// The windows the calls name: far longer than the test, so no entry
/// leaves a window while it runs.
const WINDOW: u64 = 86_400_000;
const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

/// The stored forms, and the call sent.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    Small,
    Legacy,
    Paged,
}

/// A log of `count` entries within the last hour before `now`, mostly
/// unit costs, sometimes heavy ones; blocked now and then.
fn random_log(random: &mut Random, now: i64, count: usize) -> TwinLog {
    let mut at = now - HOUR + random.below(60_000) as i64;
    let entries = (0..count)
        .map(|_| {
            at += 1 + match random.below(10) {
                0 => random.below(100_000),
                1..=3 => random.below(50),
                _ => random.below(3_000),
            } as i64;
            let cost = match random.below(12) {
                0 => 1 + random.below(1 << 40),
                1 | 2 => 1 + random.below(300),
                _ => 1,
            };
            (at.min(now - 60_000), cost)
        })
        .collect::<Vec<_>>();
    // Strictly increasing times, as the twin keeps them.
    let mut entries: Vec<(i64, u64)> = entries;
    for i in 1..entries.len() {
        if entries[i].0 <= entries[i - 1].0 {
            entries[i].0 = entries[i - 1].0 + 1;
        }
    }
    TwinLog {
        window: WINDOW,
        entries,
        blocked_until: if random.below(6) == 0 { now + HOUR } else { 0 },
    }
}

/// The bytes of `log` in `form` (None if the log does not fit it).
fn encode(log: &TwinLog, form: Form) -> Option<Vec<u8>> {
    let canonical = twin_format::canonical(log);
    match form {
        Form::Small => (canonical[2] != 3).then_some(canonical),
        Form::Legacy => Some(twin_format::legacy(log)),
        Form::Paged => (canonical[2] == 3).then_some(canonical),
    }
}

/// One mutation of `value`; for a paged value, within its header and tail
/// page, or anywhere now and then.
fn mutate(random: &mut Random, value: &[u8], form: Form) -> Vec<u8> {
    let mut bytes = value.to_vec();
    let reach = if form == Form::Paged && random.below(4) > 0 {
        341.min(bytes.len())
    } else {
        bytes.len()
    };
    let at = random.below(reach as u64) as usize;
    match random.below(7) {
        0 | 1 => bytes[at] = random.below(256) as u8,
        2 => bytes[at] ^= 1 << random.below(8),
        3 => bytes.truncate(at),
        4 => bytes.extend((0..1 + random.below(9)).map(|_| random.below(256) as u8)),
        // A header field at its widest.
        5 => {
            let field = [
                3usize, 8, 14, 20, 27, 31, 37, 39, 41, 43, 49, 56, 60, 67, 71, 73, 75,
            ];
            let from =
                field[random.below(field.len() as u64) as usize].min(bytes.len().saturating_sub(1));
            let width = 1 + random.below(6) as usize;
            let fill = if random.below(2) == 0 { 0xFF } else { 0 };
            for b in bytes.iter_mut().skip(from).take(width) {
                *b = fill;
            }
        }
        // A varint of nine bytes, or one with a needless last byte.
        _ => {
            let long: &[u8] = if random.below(2) == 0 {
                &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]
            } else {
                &[0x82, 0x00]
            };
            let at = at.max(14).min(bytes.len());
            bytes.splice(at..at, long.iter().copied());
        }
    }
    bytes
}

/// A call on `key`: the words, as the module takes them.
fn call_words(random: &mut Random, key: &str) -> Vec<String> {
    let max = [1u64, 5, 100, 1_000_000, 1 << 50][random.below(5) as usize];
    let window = WINDOW.to_string();
    let words: Vec<String> = match random.below(7) {
        0 => vec!["RATELIMIT.PEEK".into(), key.into(), window, max.to_string()],
        1 => vec![
            "RATELIMIT.CHECK".into(),
            key.into(),
            window,
            max.to_string(),
        ],
        2 => vec![
            "RATELIMIT.CHECK".into(),
            key.into(),
            "1000".into(),
            max.to_string(),
            window,
            (max.min(1 << 49) * 10).to_string(),
            "COST".into(),
            "1".into(),
        ],
        3 => vec![
            "RATELIMIT.UNDO".into(),
            key.into(),
            "COST".into(),
            (1 + random.below(500)).to_string(),
        ],
        4 => vec!["RATELIMIT.UNBLOCK".into(), key.into()],
        // A settlement: recorded past any max, on a blocked key too.
        5 => vec![
            "RATELIMIT.CHARGE".into(),
            key.into(),
            window,
            max.to_string(),
            "COST".into(),
            (1 + random.below(500)).to_string(),
        ],
        _ => vec![
            "RATELIMIT.PEEK".into(),
            key.into(),
            "600000".into(),
            max.to_string(),
            window,
            max.to_string(),
        ],
    };
    words
}

fn answer(twin: &Caller, con: &mut Connection, words: &[String]) -> Result<Value, String> {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    twin.command(&words)
        .query::<Value>(con)
        .map_err(|e| match (e.code(), e.detail()) {
            (Some(code), Some(detail)) => format!("{code} {detail}"),
            _ => e.to_string(),
        })
}

/// Two answers agree: the same kind, the same integers, except the wait
/// and the reset (fields 3 and 4), which may differ by the milliseconds
/// between the two calls.
fn agree(a: &Result<Value, String>, b: &Result<Value, String>) -> bool {
    match (a, b) {
        (Ok(Value::Array(x)), Ok(Value::Array(y))) if x.len() == 4 && y.len() == 4 => {
            let ints = |v: &[Value]| -> Vec<i64> {
                v.iter()
                    .map(|f| redis::from_redis_value(f).unwrap_or(i64::MIN))
                    .collect()
            };
            let (x, y) = (ints(x), ints(y));
            x[..2] == y[..2] && (x[2] - y[2]).abs() <= 200 && (x[3] - y[3]).abs() <= 200
        }
        _ => a == b,
    }
}

fn set(con: &mut Connection, key: &str, value: &[u8], now: i64) {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg("PXAT")
        .arg(now + 2 * WINDOW as i64)
        .query::<()>(con)
        .expect("SET");
}

fn get(con: &mut Connection, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(key).query(con).expect("GET")
}

/// Runs `cases` mutated values of `form` through one backend; returns how
/// many answered WRONGTYPE and how many answered as their meaning.
fn fuzz(server: &Server, twin: &Caller, form: Form, cases: usize, seed: u64) -> (usize, usize) {
    let mut con = twin.connect();
    let mut admin = server.connect();
    let mut random = Random::seeded(seed);
    let (mut refused, mut meant) = (0, 0);
    for case in 0..cases {
        let now = server_clock_ms(&mut admin);
        let count = match form {
            Form::Paged => 200 + random.below(600) as usize,
            _ => 1 + random.below(60) as usize,
        };
        let log = random_log(&mut random, now, count);
        let Some(original) = encode(&log, form) else {
            continue;
        };
        let mutated = mutate(&mut random, &original, form);
        let meaning = twin_format::decode(&mutated);
        let (key, twin_key, before_key, good) = (
            format!("m{case}"),
            format!("c{case}"),
            format!("o{case}"),
            format!("g{case}"),
        );
        set(&mut con, &key, &mutated, now);
        set(&mut con, &before_key, &original, now);
        if let Ok(meaning) = &meaning {
            set(&mut con, &twin_key, &twin_format::canonical(meaning), now);
        }
        set(
            &mut con,
            &good,
            &twin_format::small(&random_log(&mut random, now, 3)),
            now,
        );
        let good_before = get(&mut con, &good);
        let words = call_words(&mut random, &key);
        let got = answer(twin, &mut con, &words);
        let with = |name: &str| -> Vec<String> {
            words
                .iter()
                .map(|w| {
                    if *w == key {
                        name.to_string()
                    } else {
                        w.clone()
                    }
                })
                .collect()
        };
        let as_meant = meaning
            .as_ref()
            .ok()
            .map(|_| answer(twin, &mut con, &with(&twin_key)));
        let as_before = answer(twin, &mut con, &with(&before_key));
        let wrongtype = got.as_ref().err().is_some_and(|e| e == WRONGTYPE);
        let fits = match (form, &as_meant) {
            (_, None) if wrongtype => true,
            (Form::Paged, None) => agree(&got, &as_before),
            (Form::Paged, Some(meant)) => {
                wrongtype || agree(&got, meant) || agree(&got, &as_before)
            }
            (_, Some(meant)) => agree(&got, meant),
            (_, None) => false,
        };
        assert!(
            fits,
            "{}, {form:?} case {case}: {words:?} on {mutated:?}\n  meaning {meaning:?}\n  got {got:?}, as meant {as_meant:?}, before the change {as_before:?}",
            twin.backend.name()
        );
        if wrongtype {
            refused += 1;
        } else {
            meant += 1;
        }
        // Several keys: a refused key charges none beside it (MCHECK's
        // records, MCHARGE's settlements).
        let several = ["RATELIMIT.MCHECK", "RATELIMIT.MCHARGE"][case % 2];
        let multi: Vec<String> = [
            several, "2", &good, &key, "1", "60000", "100", "1", "60000", "100",
        ]
        .iter()
        .map(|w| w.to_string())
        .collect();
        if answer(twin, &mut con, &multi).is_err_and(|e| e == WRONGTYPE) {
            assert_eq!(
                get(&mut con, &good),
                good_before,
                "{}: case {case}: the good key changed",
                twin.backend.name()
            );
        }
        let _: () = run(&mut admin, &["DEL", &key, &twin_key, &before_key, &good]);
    }
    (refused, meant)
}

#[test]
fn mutated_values_answer_wrongtype_or_as_what_they_mean() {
    for backend in [Backend::Function, Backend::Script] {
        let (server, twin) = backend.start(&[]);
        for (form, cases, seed) in [
            (Form::Small, 2_000, 1),
            (Form::Legacy, 800, 2),
            (Form::Paged, 1_200, 3),
        ] {
            let (refused, meant) = fuzz(&server, &twin, form, cases, seed);
            println!(
                "{}: {form:?}: {refused} refused, {meant} answered",
                backend.name()
            );
            // The mutations reach both outcomes.
            assert!(
                refused > cases / 10 && meant > cases / 10,
                "{form:?}: {refused} refused, {meant} answered"
            );
        }
    }
}
