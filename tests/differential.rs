//! The module and the script twin are two implementations of one
//! contract: the same random call sequences, sent to both on one server
//! (one clock), must get the same replies.
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
const KEYS: usize = 3;

/// One random call, as the module's words after the command name and key.
fn random_call(random: &mut Random) -> (&'static str, Vec<String>) {
    let pick = random.below(10);
    if pick < 2 {
        let mut words = vec![];
        if random.below(3) > 0 {
            words = vec!["COST".to_string(), (1 + random.below(6)).to_string()];
        }
        return ("RATELIMIT.UNDO", words);
    }
    let name = if pick < 8 {
        "RATELIMIT.CHECK"
    } else {
        "RATELIMIT.PEEK"
    };
    let mut words = vec![];
    let pairs = 1 + random.below(3) as usize;
    let mut windows: Vec<u64> = vec![];
    while windows.len() < pairs {
        let window = WINDOWS[random.below(WINDOWS.len() as u64) as usize];
        // Now and then a window twice, an error both must name alike.
        if !windows.contains(&window) || random.below(40) == 0 {
            windows.push(window);
        }
    }
    let mut smallest_max = u64::MAX;
    for window in windows {
        let max = 1 + random.below(12);
        smallest_max = smallest_max.min(max);
        words.push(window.to_string());
        words.push(max.to_string());
    }
    if random.below(3) == 0 {
        // Sometimes above the smallest max: refused alike.
        let cost = 1 + random.below(smallest_max + 1);
        words.extend(["COST".to_string(), cost.to_string()]);
    }
    if random.below(3) == 0 {
        let precision = PRECISIONS[random.below(PRECISIONS.len() as u64) as usize];
        words.extend(["PRECISION".to_string(), precision.to_string()]);
    }
    (name, words)
}

/// A reply as comparable text: an error's text, an integer, or the
/// decision's 4 integers.
#[derive(Debug)]
enum Reply {
    Error(String),
    Refund(i64),
    Decision([i64; 4]),
}

fn send(caller: &Caller, con: &mut Connection, words: &[&str]) -> Reply {
    match caller.command(words).query::<redis::Value>(con) {
        Err(e) => Reply::Error(format!(
            "{} {}",
            e.code().unwrap_or(""),
            e.detail().unwrap_or("")
        )),
        Ok(redis::Value::Int(n)) => Reply::Refund(n),
        Ok(redis::Value::Array(values)) => {
            let numbers: Vec<i64> = values
                .iter()
                .map(|v| match v {
                    redis::Value::Int(n) => *n,
                    other => panic!("{words:?}: not an integer: {other:?}"),
                })
                .collect();
            Reply::Decision(numbers.try_into().expect("4 integers"))
        }
        Ok(other) => panic!("{words:?}: unexpected reply {other:?}"),
    }
}

/// Equal, with timed fields equal in being zero and within `drift` ms.
fn agree(module: &Reply, twin: &Reply, drift: i64) -> bool {
    match (module, twin) {
        (Reply::Error(a), Reply::Error(b)) => a == b,
        (Reply::Refund(a), Reply::Refund(b)) => a == b,
        (Reply::Decision(a), Reply::Decision(b)) => {
            a[..2] == b[..2]
                && a[2..]
                    .iter()
                    .zip(&b[2..])
                    .all(|(x, y)| (*x == 0) == (*y == 0) && (x - y).abs() <= drift)
        }
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
    // Errors, refunds, denials and admissions compared.
    let mut seen = [0; 4];
    for seed in 1..=24u64 {
        let mut random = Random::seeded(seed);
        let prefix = format!("seq{seed}");
        for step in 0..250 {
            let key = random.below(KEYS as u64);
            let (name, args) = random_call(&mut random);
            let twin = &twins[random.below(2) as usize];
            let module_key = format!("{prefix}:module:{key}");
            let twin_key = format!("{prefix}:twin:{key}");
            let words = |key: &str| -> Vec<String> {
                let mut words = vec![name.to_string(), key.to_string()];
                words.extend(args.iter().cloned());
                words
            };
            let (module_words, twin_words) = (words(&module_key), words(&twin_key));
            let module_refs: Vec<&str> = module_words.iter().map(String::as_str).collect();
            let twin_refs: Vec<&str> = twin_words.iter().map(String::as_str).collect();
            let expected = send(&module, &mut con, &module_refs);
            let got = send(twin, &mut con, &twin_refs);
            let drift = started.elapsed().as_millis() as i64 + 2;
            assert!(
                agree(&expected, &got, drift),
                "seed {seed} step {step} ({}): {twin_refs:?}\nmodule: {expected:?}\ntwin:   {got:?}",
                twin.backend.name()
            );
            let kind = match &got {
                Reply::Error(_) => 0,
                Reply::Refund(_) => 1,
                Reply::Decision([allowed, ..]) => 2 + *allowed as usize,
            };
            seen[kind] += 1;
        }
    }
    let [errors, refunds, denied, allowed] = seen;
    eprintln!(
        "answered alike in {:?}: {allowed} allowed, {denied} denied, {refunds} refunds, {errors} errors",
        started.elapsed()
    );
    assert!(
        seen.iter().all(|&n| n > 100),
        "every kind of reply is compared"
    );
}
