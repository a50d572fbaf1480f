//! The token bucket against the other GCRAs, by instructions per call:
//! one server under callgrind (AOF on, fsync every second, as the issue
//! measured), every row in the same run: INCR (the cheapest write),
//! RATELIMIT.GCRA allowed and limited, RATELIMIT.CHECK for scale, a GCRA
//! script written the way go-redis/redis_rate documents its algorithm
//! (`bench/lua/gcra_float.lua`, by EVALSHA), and redis-cell's CL.THROTTLE
//! when its module is given (`make bench EXTRA_MODULE=.../libredis_cell.so
//! EXTRA_COMMAND="CL.THROTTLE k:__rand_int__ 15 30 60"`; built from its
//! source, which this repository does not hold). Each row's keys are warmed
//! first; then callgrind's counters are zeroed, the row's calls sent in
//! one pipeline, and the counters dumped: the server's instructions less
//! `serverCron`'s, per call. And each approach's MEMORY USAGE of one key
//! (names of one length). Written to bench/results/gcra.csv.

use harness::{command, run, Server};
use redis::Connection;
use std::path::Path;
use std::process::Command;

/// Keys per row, and calls to each in the measured batch: with the warm-up
/// call, 11 per key, within a burst of 16, so "allowed" rows are.
const KEYS: u64 = 500;
const CALLS_PER_KEY: u64 = 10;

/// 30 per minute in bursts of 16, in each approach's words.
const LIMIT: [&str; 3] = ["15", "30", "60"];

/// The script: redis_rate's Limit{Rate: 30, Burst: 16, Period: 60 s}.
const SCRIPT: &str = include_str!("../lua/gcra_float.lua");

pub struct GcraRow {
    pub approach: &'static str,
    pub outcome: &'static str,
    pub instructions: u64,
    /// MEMORY USAGE of one of the row's keys (named `x:0`).
    pub memory_usage: i64,
}

/// One row: the call for key `key` (`fill` first, on every key, if the row
/// is about full buckets).
struct Approach {
    name: &'static str,
    outcome: &'static str,
    prefix: &'static str,
    call: fn(&str, &str) -> Vec<String>,
    fill: Option<fn(&str, &str) -> Vec<String>>,
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|w| w.to_string()).collect()
}

fn approaches() -> Vec<Approach> {
    let gcra = |key: &str, _: &str| {
        let mut call = words(&["RATELIMIT.GCRA", key]);
        call.extend(words(&LIMIT));
        call
    };
    let cell = |key: &str, _: &str| {
        let mut call = words(&["CL.THROTTLE", key]);
        call.extend(words(&LIMIT));
        call
    };
    let script = |key: &str, sha: &str| words(&["EVALSHA", sha, "1", key, "16", "30", "60", "1"]);
    vec![
        Approach {
            name: "INCR",
            outcome: "-",
            prefix: "i",
            call: |key, _| words(&["INCR", key]),
            fill: None,
        },
        Approach {
            name: "RATELIMIT.GCRA",
            outcome: "allowed",
            prefix: "g",
            call: gcra,
            fill: None,
        },
        Approach {
            name: "RATELIMIT.GCRA",
            outcome: "limited",
            prefix: "h",
            call: gcra,
            fill: Some(|key, _| words(&["RATELIMIT.GCRA", key, "15", "30", "60", "TOKENS", "16"])),
        },
        Approach {
            name: "RATELIMIT.CHECK (sliding window)",
            outcome: "allowed",
            prefix: "w",
            call: |key, _| words(&["RATELIMIT.CHECK", key, "60000", "30"]),
            fill: None,
        },
        Approach {
            name: "GCRA script, redis_rate's algorithm (EVALSHA)",
            outcome: "allowed",
            prefix: "s",
            call: script,
            fill: None,
        },
        Approach {
            name: "GCRA script, redis_rate's algorithm (EVALSHA)",
            outcome: "limited",
            prefix: "t",
            call: script,
            fill: Some(|key, sha| words(&["EVALSHA", sha, "1", key, "16", "30", "60", "16"])),
        },
        Approach {
            name: "redis-cell CL.THROTTLE",
            outcome: "allowed",
            prefix: "c",
            call: cell,
            fill: None,
        },
        Approach {
            name: "redis-cell CL.THROTTLE",
            outcome: "limited",
            prefix: "d",
            call: cell,
            fill: Some(|key, _| words(&["CL.THROTTLE", key, "15", "30", "60", "16"])),
        },
    ]
}

/// Every row, on one server under callgrind with `extra_module` (redis-cell)
/// loaded if given; the redis-cell rows are left out, with a note, if not.
pub fn run_all(extra_module: Option<&str>) -> (Vec<GcraRow>, Option<String>) {
    let mut extra = vec!["--appendonly", "yes", "--appendfsync", "everysec"];
    if let Some(path) = extra_module {
        extra.extend(["--loadmodule", path]);
    }
    let wrapper = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=callgrind.out.%p",
    ];
    let server = Server::start_wrapped(&wrapper, &extra);
    let mut con = server.connect();
    let sha: String = run(&mut con, &["SCRIPT", "LOAD", SCRIPT]);
    let has_cell = command(&["COMMAND", "INFO", "CL.THROTTLE"])
        .query::<Vec<Option<redis::Value>>>(&mut con)
        .is_ok_and(|info| info.first().is_some_and(Option::is_some));
    let note = (!has_cell).then(|| {
        "redis-cell rows skipped: give its module (built from github.com/brandur/redis-cell, \
         `cargo build --release`): make bench EXTRA_MODULE=/path/libredis_cell.so \
         EXTRA_COMMAND=\"CL.THROTTLE k:__rand_int__ 15 30 60\""
            .to_string()
    });
    let rows = approaches()
        .iter()
        .filter(|a| has_cell || !a.name.starts_with("redis-cell"))
        .map(|a| measure(&server, &mut con, a, &sha))
        .collect();
    (rows, note)
}

fn measure(server: &Server, con: &mut Connection, approach: &Approach, sha: &str) -> GcraRow {
    let key = |i: u64| format!("{}:{}", approach.prefix, i % KEYS);
    let send = |con: &mut Connection, calls: &mut dyn Iterator<Item = Vec<String>>| {
        let mut pipe = redis::pipe();
        for call in calls {
            let call: Vec<&str> = call.iter().map(String::as_str).collect();
            pipe.add_command(command(&call)).ignore();
        }
        pipe.query::<()>(con).expect("the row's calls");
    };
    if let Some(fill) = approach.fill {
        send(con, &mut (0..KEYS).map(|i| fill(&key(i), sha)));
    }
    send(con, &mut (0..KEYS).map(|i| (approach.call)(&key(i), sha)));
    let last = (approach.call)(&key(0), sha);
    let last: Vec<&str> = last.iter().map(String::as_str).collect();
    let reply: redis::Value = run(con, &last);
    let pid = server.pid().expect("the server runs").to_string();
    callgrind_control(&["-z", &pid]);
    let calls = KEYS * CALLS_PER_KEY;
    send(con, &mut (0..calls).map(|i| (approach.call)(&key(i), sha)));
    callgrind_control(&["-d", &pid]);
    let instructions = server_instructions(&server.dir) / calls;
    let memory_usage: i64 = run(con, &["MEMORY", "USAGE", &key(0)]);
    eprintln!(
        "  {:<48} {:<8} {:>8} instructions/call, MEMORY USAGE {memory_usage} (a warm call: {reply:?})",
        approach.name, approach.outcome, instructions
    );
    GcraRow {
        approach: approach.name,
        outcome: approach.outcome,
        instructions,
        memory_usage,
    }
}

fn callgrind_control(args: &[&str]) {
    let status = Command::new("callgrind_control")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("callgrind_control (valgrind)");
    assert!(status.success(), "callgrind_control {args:?}");
}

/// The instructions of the newest dump in `dir`, less `serverCron`'s (the
/// server's timer, which runs whatever the calls).
fn server_instructions(dir: &Path) -> u64 {
    let newest = std::fs::read_dir(dir)
        .expect("the server's directory")
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("callgrind.out."))
        })
        .max_by_key(|path| dump_number(path))
        .expect("a callgrind dump");
    let text = std::fs::read_to_string(&newest).expect("the dump");
    let total = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|n| n.split_whitespace().next()?.parse::<u64>().ok())
        .expect("the dump's total");
    let annotated = Command::new("callgrind_annotate")
        .arg("--inclusive=yes")
        .arg(&newest)
        .output()
        .expect("callgrind_annotate (valgrind)");
    let cron = String::from_utf8_lossy(&annotated.stdout)
        .lines()
        .find(|l| l.contains(":serverCron "))
        .and_then(|l| {
            l.split_whitespace()
                .next()?
                .replace(',', "")
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    total - cron
}

/// The dump's sequence number (`callgrind.out.<pid>.<n>`; 0 for the one
/// written at exit, `callgrind.out.<pid>`).
fn dump_number(path: &Path) -> u64 {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    name.as_deref()
        .and_then(|n| n.strip_prefix("callgrind.out."))
        .and_then(|rest| rest.split_once('.'))
        .and_then(|(_pid, n)| n.parse().ok())
        .unwrap_or(0)
}

/// bench/results/gcra.csv: the rows, each against INCR.
pub fn write(rows: &[GcraRow], note: Option<&str>, dir: &Path) -> std::io::Result<()> {
    let incr = rows
        .iter()
        .find(|r| r.approach == "INCR")
        .map_or(1, |r| r.instructions.max(1));
    let mut csv =
        String::from("approach,outcome,instructions_per_call,x_incr,memory_usage_bytes\n");
    for row in rows {
        csv.push_str(&format!(
            "\"{}\",{},{},{:.2},{}\n",
            row.approach,
            row.outcome,
            row.instructions,
            row.instructions as f64 / incr as f64,
            row.memory_usage
        ));
    }
    if let Some(note) = note {
        csv.push_str(&format!("# {note}\n"));
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("gcra.csv"), csv)
}
