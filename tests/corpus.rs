//! The contract's corpus (contract/corpus.jsonl, written by the reference
//! model; format in contract/README.md) on this repository's engines
//! beyond the core, which runs it in `cargo test --lib`:
//! - the script twin, embedded under the corpus's own clock (harness
//!   `EmbeddedTwin`): every case, at its own page size and at 16-byte
//!   pages, its replies and errors exact, its stored values decoded (entries,
//!   window, block) and its expiries exact;
//! - the module, and the twin by FCALL and by EVALSHA, on a real server,
//!   for the cases a server's clock can replay (`pinned`): replies and
//!   errors exact but for the waits, which may differ by the milliseconds
//!   the server's calls took; which keys exist, and their expiries within
//!   the same slack; the twin's stored cost and block.
//!
//! A call the twin cannot be sent in its own form (a several-key call
//! whose numkeys FCALL itself refuses) is an error in the corpus, and is
//! counted, not run.

use harness::corpus::{corpus, Case, Held, Step};
use harness::{
    error_line, twin_form, twin_format, twin_operation, Backend, Caller, EmbeddedTwin, Reply,
};
use redis::Value;
use std::collections::BTreeMap;
use std::time::Instant;

/// The call's answer shape for a real server's reply.
fn reply_of(call: &[String], reply: redis::RedisResult<Value>) -> Reply {
    let reply = match reply {
        Ok(value) => value,
        Err(_) => return Reply::Error(error_line(reply, "a call")),
    };
    let integers = |value: &Value| -> Vec<i64> {
        let Value::Array(items) = value else {
            panic!("{call:?}: an array, got {value:?}");
        };
        items
            .iter()
            .map(|item| match item {
                Value::Int(n) => *n,
                other => panic!("{call:?}: an integer, got {other:?}"),
            })
            .collect()
    };
    let four = |value: &Value| -> [i64; 4] {
        integers(value)[..4]
            .try_into()
            .expect("a decision's 4 integers")
    };
    // CHARGE's reply has CHECK's shape, MCHARGE's MCHECK's.
    match (twin_operation(call).as_deref(), &reply) {
        (Some("check" | "peek" | "charge"), _) => Reply::Decision(four(&reply)),
        (Some("mcheck" | "mpeek" | "mcharge"), Value::Array(items)) if items.len() == 5 => {
            let fields: [i64; 4] = integers(&Value::Array(items[..4].to_vec()))
                .try_into()
                .expect("4 integers");
            Reply::Joint(fields, integers(&items[4]))
        }
        (Some("mundo"), _) => Reply::Integers(integers(&reply)),
        (Some("gcra"), _) => {
            Reply::Bucket(integers(&reply).try_into().expect("a bucket's 5 integers"))
        }
        (_, Value::Int(n)) => Reply::Integer(*n),
        _ => panic!("{call:?}: unexpected reply {reply:?}"),
    }
}

/// What one engine's run of the corpus did.
#[derive(Default)]
struct Tally {
    cases: usize,
    steps: usize,
    /// Calls the twin cannot be sent (an error in the corpus).
    unsendable: usize,
}

impl Tally {
    fn report(&self, engine: &str) {
        println!(
            "{engine}: {} cases, {} calls, {} not sendable in the twin's form",
            self.cases, self.steps, self.unsendable
        );
        assert!(self.cases > 0 && self.steps > self.unsendable);
    }
}

/// One case on the embedded twin; the first difference, if any.
fn run_embedded(twin: &EmbeddedTwin, case: &Case, tally: &mut Tally) -> Result<(), String> {
    tally.cases += 1;
    for (index, step) in case.steps.iter().enumerate() {
        tally.steps += 1;
        let at = |what: String| format!("{} step {index} {:?}: {what}", case.name, step.call);
        twin.set_clock(case.epoch + step.at);
        let Some(got) = twin.send(&step.call) else {
            tally.unsendable += 1;
            if !matches!(step.twin_reply, Reply::Error(_)) {
                return Err(at(
                    "the twin cannot be sent a call the corpus answers".into()
                ));
            }
            continue;
        };
        if got != step.twin_reply {
            return Err(at(format!("twin {got:?}, corpus {:?}", step.twin_reply)));
        }
        for (key, want) in &step.twin_state {
            let got = twin
                .state(key, case.epoch)
                .map_err(|e| at(format!("{key}: {e}")))?;
            if &got != want {
                return Err(at(format!("{key}: twin holds {got:?}, corpus {want:?}")));
            }
        }
    }
    Ok(())
}

#[test]
fn the_embedded_twin_answers_the_corpus() {
    let cases = corpus();
    for (name, make) in [
        ("its own pages", EmbeddedTwin::new as fn() -> EmbeddedTwin),
        ("16-byte pages", || EmbeddedTwin::with_page(16, 65536)),
    ] {
        let mut tally = Tally::default();
        for case in &cases {
            run_embedded(&make(), case, &mut tally).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        tally.report(&format!("embedded twin, {name}"));
    }
}

/// The answer a real server owes: the corpus's, with its waits moved by
/// up to `slack` ms toward what the server's clock says.
fn within(got: &Reply, want: &Reply, slack: i64) -> bool {
    match (got.waits(), want.waits()) {
        (Some(g), Some(w)) => {
            let near = g.iter().zip(w).all(|(g, w)| (g - w).abs() <= slack);
            near && got.with_waits(w) == *want
        }
        _ => got == want,
    }
}

/// What a server shows of a key against the corpus's state after a call
/// at `at`: whether it exists, its expiry (as PTTL, within `slack`), and
/// for the twin its value's recorded cost and whether it is blocked.
fn check_server_state(
    con: &mut redis::Connection,
    backend: Backend,
    key: &str,
    want: Option<&Held>,
    at: i64,
    slack: i64,
) -> Result<(), String> {
    let pttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query(con)
        .map_err(|e| e.to_string())?;
    let Some(want) = want else {
        return match pttl {
            -2 => Ok(()),
            _ => Err(format!("{key} exists (PTTL {pttl}); the corpus has none")),
        };
    };
    let expires = want.expires() - at;
    if pttl < 0 || (pttl - expires).abs() > slack {
        return Err(format!(
            "{key}: PTTL {pttl}, the corpus expires it {expires} ms after the call"
        ));
    }
    if let (true, Held::Log(want)) = (backend.is_twin(), want) {
        let value: Vec<u8> = redis::cmd("GET")
            .arg(key)
            .query(con)
            .map_err(|e| e.to_string())?;
        let log = twin_format::decode(&value).map_err(|e| format!("{key}: {e}"))?;
        let cost = |entries: &[(i64, u64)]| entries.iter().map(|e| e.1).sum::<u64>();
        let shown = (cost(&log.entries), log.blocked_until > 0);
        let owed = (cost(&want.entries), want.blocked_until > 0);
        if shown != owed {
            return Err(format!(
                "{key}: (cost, blocked) {shown:?}, the corpus {owed:?}"
            ));
        }
    }
    Ok(())
}

/// How far apart a server's clocks may be, in ms.
const SLACK: i64 = 20;

/// One pinned case on a server; the first difference, if any.
fn run_on_server(
    caller: &Caller,
    con: &mut redis::Connection,
    case: &Case,
    tally: &mut Tally,
) -> Result<(), String> {
    tally.cases += 1;
    let start = Instant::now();
    let first = case.steps.first().map_or(0, |s| s.at);
    for (index, step) in case.steps.iter().enumerate() {
        tally.steps += 1;
        let at = |what: String| format!("{} step {index} {:?}: {what}", case.name, step.call);
        let (want, states): (&Reply, &BTreeMap<String, Option<Held>>) = match caller.backend {
            Backend::Module => (&step.reply, &step.state),
            _ => (&step.twin_reply, &step.twin_state),
        };
        if caller.backend.is_twin() && twin_form(&step.call).is_none() {
            tally.unsendable += 1;
            continue;
        }
        let words: Vec<&str> = step.call.iter().map(String::as_str).collect();
        let got = reply_of(&step.call, caller.command(&words).query(con));
        // The corpus's calls are within 10 ms of each other; the server's
        // within what has passed since the first, on clocks (the
        // server's cached time, TIME, the client's) that disagree by a few
        // ms. The embedded run holds the waits and expiries exactly.
        let slack = (step.at - first).abs() + start.elapsed().as_millis() as i64 + SLACK;
        // A bucket's waits in seconds may round across a second.
        let in_seconds =
            matches!(want, Reply::Bucket(_)) && !words.iter().any(|w| w.eq_ignore_ascii_case("MS"));
        if !within(&got, want, if in_seconds { 1 } else { slack }) {
            return Err(at(format!(
                "{} {got:?}, corpus {want:?}",
                caller.backend.name()
            )));
        }
        for (key, state) in states {
            check_server_state(con, caller.backend, key, state.as_ref(), step.at, slack)
                .map_err(|e| at(format!("{e} (slack {slack})")))?;
        }
    }
    Ok(())
}

fn pinned_cases_on(backend: Backend) {
    let (server, caller) = backend.start(&[]);
    let mut con = caller.connect();
    let mut admin = server.connect();
    let mut tally = Tally::default();
    for case in corpus().iter().filter(|c| c.pinned) {
        redis::cmd("FLUSHALL")
            .query::<()>(&mut admin)
            .expect("FLUSHALL");
        run_on_server(&caller, &mut con, case, &mut tally).unwrap_or_else(|e| panic!("{e}"));
    }
    tally.report(backend.name());
}

#[test]
fn the_module_answers_the_pinned_cases() {
    pinned_cases_on(Backend::Module);
}

#[test]
fn the_twin_by_fcall_answers_the_pinned_cases() {
    pinned_cases_on(Backend::Function);
}

#[test]
fn the_twin_by_evalsha_answers_the_pinned_cases() {
    pinned_cases_on(Backend::Script);
}

/// The step type is the corpus's; a test that reads none would pass on an
/// empty file.
#[test]
fn the_corpus_covers_every_command_and_the_servers_get_a_share() {
    let cases = corpus();
    let steps: Vec<&Step> = cases.iter().flat_map(|c| &c.steps).collect();
    let operation_of = |call: &[String]| call[0].to_ascii_lowercase().replace("ratelimit.", "");
    for operation in [
        "check", "peek", "undo", "unblock", "mcheck", "mpeek", "mundo", "charge", "mcharge",
    ] {
        let calls = |pinned: bool| {
            cases
                .iter()
                .filter(|c| !pinned || c.pinned)
                .flat_map(|c| &c.steps)
                .filter(|s| operation_of(&s.call) == operation)
                .filter(|s| !matches!(s.reply, Reply::Error(_)))
                .count()
        };
        assert!(
            calls(false) >= 20,
            "{operation}: {} answered calls",
            calls(false)
        );
        assert!(
            calls(true) >= 5,
            "{operation}: {} pinned answered calls",
            calls(true)
        );
    }
    let errors = steps
        .iter()
        .filter(|s| matches!(s.reply, Reply::Error(_)))
        .count();
    let twin_only = steps.iter().filter(|s| s.reply != s.twin_reply).count();
    assert!(
        errors >= 60 && twin_only >= 5,
        "{errors} errors, {twin_only} twin refusals"
    );
}
