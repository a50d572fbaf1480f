//! The module and the script twin are two implementations of one
//! contract: the same random call sequences (CHECK, PEEK, UNDO and the
//! multi-key MCHECK, MPEEK, MUNDO), sent to both on one server (one
//! clock), must get the same replies.
//!
//! Time is pinned the way a live server allows: every window is far
//! longer than the test and no sequence waits, so nothing expires and
//! `allowed`, `remaining`, UNDO's count and every error text must be
//! equal; the timed fields (`retry_after_ms`, `reset_after_ms`) are zero
//! for both or for neither, and otherwise differ by no more than the
//! milliseconds between the two calls that recorded and read them, which
//! the test bounds by its own running time. The timed fields' exact
//! values are held to the reference model in tests/twin_model.rs, with
//! the clock under the test's control.

use harness::{Backend, Caller, Random, Server};
use redis::Connection;
use std::time::Instant;

/// Windows from 11 days to 365: nothing recorded here expires while the
/// test runs.
const WINDOWS: [u64; 5] = [
    1_000_000_000,
    2_000_000_000,
    5_000_000_000,
    10_000_000_000,
    31_536_000_000,
];
const PRECISIONS: [u64; 4] = [1, 7, 1_000, 3_600_000];
/// Blocks far longer than the test, or out of range.
const BLOCKS: [u64; 5] = [
    0,
    1_000_000_000,
    3_000_000_000,
    31_536_000_000,
    31_536_000_001,
];
const KEYS: usize = 3;

/// One random call (CHECK, PEEK, MCHECK and MPEEK now and then with
/// `BLOCK ms`, UNBLOCK): the command's name, the keys it names (indices, in
/// order; a multi-key call now and then names one twice, an error both
/// must name alike) and its words after the keys.
struct Call {
    name: &'static str,
    keys: Vec<u64>,
    args: Vec<String>,
}

impl Call {
    /// The module's words, with the keys under `prefix`.
    fn words(&self, prefix: &str) -> Vec<String> {
        let keys = self.keys.iter().map(|k| format!("{prefix}:{k}"));
        let mut words = vec![self.name.to_string()];
        if self.name.starts_with("RATELIMIT.M") {
            words.push(self.keys.len().to_string());
        }
        words.extend(keys);
        words.extend(self.args.iter().cloned());
        words
    }
}

fn random_call(random: &mut Random) -> Call {
    let pick = random.below(15);
    if pick == 14 {
        let keys = vec![random.below(KEYS as u64)];
        return Call {
            name: "RATELIMIT.UNBLOCK",
            keys,
            args: vec![],
        };
    }
    let multi = pick >= 10;
    let mut keys = vec![random.below(KEYS as u64)];
    if multi {
        keys = (0..KEYS as u64).filter(|_| random.below(2) == 0).collect();
        if keys.is_empty() || random.below(20) == 0 {
            keys.push(random.below(KEYS as u64));
        }
    }
    if pick < 2 || pick == 13 {
        let mut args = vec![];
        if random.below(3) > 0 {
            args = vec!["COST".to_string(), (1 + random.below(6)).to_string()];
        }
        let name = if multi {
            "RATELIMIT.MUNDO"
        } else {
            "RATELIMIT.UNDO"
        };
        return Call { name, keys, args };
    }
    let name = match pick {
        0..8 => "RATELIMIT.CHECK",
        8..10 => "RATELIMIT.PEEK",
        10 | 11 => "RATELIMIT.MCHECK",
        _ => "RATELIMIT.MPEEK",
    };
    let mut args = vec![];
    let mut smallest_max = u64::MAX;
    for _ in 0..keys.len() {
        let pairs = random_pairs(random, &mut smallest_max);
        if multi {
            args.push((pairs.len() / 2).to_string());
        }
        args.extend(pairs);
    }
    if random.below(3) == 0 {
        // Sometimes above the smallest max: refused alike.
        let cost = 1 + random.below(smallest_max + 1);
        args.extend(["COST".to_string(), cost.to_string()]);
    }
    if random.below(3) == 0 {
        let precision = PRECISIONS[random.below(PRECISIONS.len() as u64) as usize];
        args.extend(["PRECISION".to_string(), precision.to_string()]);
    }
    if random.below(4) == 0 {
        // Now and then out of range: refused alike.
        let block = BLOCKS[random.below(BLOCKS.len() as u64) as usize];
        args.extend(["BLOCK".to_string(), block.to_string()]);
    }
    Call { name, keys, args }
}

/// One key's `window max` words, 1 to 3 pairs; lowers `smallest_max`.
fn random_pairs(random: &mut Random, smallest_max: &mut u64) -> Vec<String> {
    let pairs = 1 + random.below(3) as usize;
    let mut windows: Vec<u64> = vec![];
    while windows.len() < pairs {
        let window = WINDOWS[random.below(WINDOWS.len() as u64) as usize];
        // Now and then a window twice, an error both must name alike.
        if !windows.contains(&window) || random.below(40) == 0 {
            windows.push(window);
        }
    }
    let mut words = vec![];
    for window in windows {
        let max = 1 + random.below(12);
        *smallest_max = (*smallest_max).min(max);
        words.push(window.to_string());
        words.push(max.to_string());
    }
    words
}

/// A reply as comparable text: an error's text, an integer, the
/// decision's 4 integers, MCHECK's 4 and its denied keys, MUNDO's refunds.
#[derive(Debug)]
enum Reply {
    Error(String),
    Refund(i64),
    Decision([i64; 4]),
    Joint([i64; 4], Vec<i64>),
    Refunds(Vec<i64>),
}

fn integers(words: &[&str], values: &[redis::Value]) -> Vec<i64> {
    values
        .iter()
        .map(|v| match v {
            redis::Value::Int(n) => *n,
            other => panic!("{words:?}: not an integer: {other:?}"),
        })
        .collect()
}

fn send(caller: &Caller, con: &mut Connection, words: &[&str]) -> Reply {
    match caller.command(words).query::<redis::Value>(con) {
        Err(e) => Reply::Error(format!(
            "{} {}",
            e.code().unwrap_or(""),
            e.detail().unwrap_or("")
        )),
        Ok(redis::Value::Int(n)) => Reply::Refund(n),
        Ok(redis::Value::Array(values)) => match values.split_last() {
            Some((redis::Value::Array(denied), fields)) => Reply::Joint(
                integers(words, fields).try_into().expect("4 integers"),
                integers(words, denied),
            ),
            _ if words[0] == "RATELIMIT.MUNDO" => Reply::Refunds(integers(words, &values)),
            _ => Reply::Decision(integers(words, &values).try_into().expect("4 integers")),
        },
        Ok(other) => panic!("{words:?}: unexpected reply {other:?}"),
    }
}

/// Which of the module's keys under `prefix` are blocked: a PEEK that any
/// log here leaves room for (a second's window, far more than the test
/// records) is denied only by a block; blocks outlast the test.
fn blocked(module: &Caller, con: &mut Connection, prefix: &str) -> [bool; KEYS] {
    std::array::from_fn(|k| {
        let key = format!("{prefix}:{k}");
        let words = ["RATELIMIT.PEEK", key.as_str(), "1000", "1000000"];
        module.run::<Vec<i64>>(con, &words)[0] == 0
    })
}

/// How often the sequences reach the states a block makes.
#[derive(Debug, Default)]
struct BlockCounts {
    /// CHECK or MCHECK that blocked a key not blocked before.
    started: u32,
    /// CHECK or PEEK on a blocked key.
    single_on_blocked: u32,
    /// MCHECK or MPEEK naming a blocked key.
    multi_on_blocked: u32,
    /// MCHECK denied by a blocked key and by another key's own limits.
    multi_blocked_and_limited: u32,
    /// UNBLOCK that lifted a block in force.
    lifted: u32,
}

impl BlockCounts {
    fn count(&mut self, call: &Call, before: &[bool; KEYS], after: &[bool; KEYS], reply: &Reply) {
        let named = |blocked: &[bool; KEYS]| call.keys.iter().any(|&k| blocked[k as usize]);
        let started = call
            .keys
            .iter()
            .any(|&k| after[k as usize] && !before[k as usize]);
        match (call.name, reply) {
            (_, Reply::Error(_)) => {}
            ("RATELIMIT.UNBLOCK", Reply::Refund(1)) => self.lifted += 1,
            ("RATELIMIT.CHECK" | "RATELIMIT.PEEK", _) if named(before) => {
                self.single_on_blocked += 1
            }
            ("RATELIMIT.MCHECK", Reply::Joint(_, denied)) if named(before) => {
                self.multi_on_blocked += 1;
                let by_limits = denied
                    .iter()
                    .any(|&position| !before[call.keys[position as usize - 1] as usize]);
                self.multi_blocked_and_limited += u32::from(by_limits);
            }
            ("RATELIMIT.MPEEK", _) if named(before) => self.multi_on_blocked += 1,
            _ => {}
        }
        self.started += u32::from(started);
    }
}

/// Equal, with timed fields equal in being zero and within `drift` ms.
fn agree(module: &Reply, twin: &Reply, drift: i64) -> bool {
    let fields = |a: &[i64; 4], b: &[i64; 4]| {
        a[..2] == b[..2]
            && a[2..]
                .iter()
                .zip(&b[2..])
                .all(|(x, y)| (*x == 0) == (*y == 0) && (x - y).abs() <= drift)
    };
    match (module, twin) {
        (Reply::Error(a), Reply::Error(b)) => a == b,
        (Reply::Refund(a), Reply::Refund(b)) => a == b,
        (Reply::Refunds(a), Reply::Refunds(b)) => a == b,
        (Reply::Decision(a), Reply::Decision(b)) => fields(a, b),
        (Reply::Joint(a, x), Reply::Joint(b, y)) => fields(a, b) && x == y,
        _ => false,
    }
}

#[test]
fn module_and_twin_answer_random_sequences_alike() {
    let server = Server::start(&[]);
    let module = Backend::Module.prepare(&server);
    // Both of the twin's forms, on the same server, alternately.
    let twins = [
        Backend::Function.prepare(&server),
        Backend::Script.prepare(&server),
    ];
    let mut con = server.connect();
    let started = Instant::now();
    // Errors, refunds, denials and admissions of one key and of several
    // compared.
    let mut seen = [0; 6];
    let mut blocks = BlockCounts::default();
    for seed in 1..=24u64 {
        let mut random = Random::seeded(seed);
        let prefix = format!("seq{seed}");
        for step in 0..250 {
            let call = random_call(&mut random);
            let before = blocked(&module, &mut con, &format!("{prefix}:module"));
            let twin = &twins[random.below(2) as usize];
            let module_words = call.words(&format!("{prefix}:module"));
            let twin_words = call.words(&format!("{prefix}:twin"));
            let module_refs: Vec<&str> = module_words.iter().map(String::as_str).collect();
            let twin_refs: Vec<&str> = twin_words.iter().map(String::as_str).collect();
            // Errors that name a key name it under the module's prefix.
            let expected = match send(&module, &mut con, &module_refs) {
                Reply::Error(text) => Reply::Error(text.replace(":module:", ":twin:")),
                reply => reply,
            };
            let got = send(twin, &mut con, &twin_refs);
            let drift = started.elapsed().as_millis() as i64 + 2;
            assert!(
                agree(&expected, &got, drift),
                "seed {seed} step {step} ({}): {twin_refs:?}\nmodule: {expected:?}\ntwin:   {got:?}",
                twin.backend.name()
            );
            let kind = match &got {
                Reply::Error(_) => 0,
                Reply::Refund(_) | Reply::Refunds(_) => 1,
                Reply::Decision([allowed, ..]) => 2 + *allowed as usize,
                Reply::Joint([allowed, ..], _) => 4 + *allowed as usize,
            };
            seen[kind] += 1;
            let after = blocked(&module, &mut con, &format!("{prefix}:module"));
            blocks.count(&call, &before, &after, &got);
        }
    }
    eprintln!("blocks: {blocks:?}");
    let BlockCounts {
        started: blocks_started,
        single_on_blocked,
        multi_on_blocked,
        multi_blocked_and_limited,
        lifted,
    } = blocks;
    assert!(
        [blocks_started, single_on_blocked, multi_on_blocked, lifted]
            .iter()
            .all(|&n| n > 50)
            && multi_blocked_and_limited > 10,
        "blocks are started, met by every call, and lifted: {blocks:?}"
    );
    let [errors, refunds, denied, allowed, joint_denied, joint_allowed] = seen;
    eprintln!(
        "answered alike in {:?}: {allowed} allowed, {denied} denied, {refunds} refunds, \
         {errors} errors; several keys: {joint_allowed} allowed, {joint_denied} denied",
        started.elapsed()
    );
    assert!(
        seen.iter().all(|&n| n > 100),
        "every kind of reply is compared"
    );
}
