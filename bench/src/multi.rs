//! One request against a user, an IP and a tenant limit: one
//! RATELIMIT.MCHECK over the three keys against three RATELIMIT.CHECKs and
//! against the all-or-nothing Lua recipe MCHECK replaced
//! (`bench/lua/all_or_nothing.lua`: three PEEKs, then three CHECKs, in one
//! EVALSHA), and the same two with the script twin (FCALL ratelimit_mcheck
//! against three FCALL ratelimit_check), same keys, same limits (loose
//! enough that every request is allowed, so all record the same), same run. Server CPU per request from `INFO
//! commandstats`, and wall time per request on one connection (the CHECKs
//! take three round trips); written to bench/results/multi.csv. Then the
//! other measure issue 18 asks for, the memory of a blocked key against
//! an open one (bench/results/block.csv, see `memory.rs`).

use crate::approaches;
use crate::measure;
use crate::memory;
use crate::Bench;
use std::path::Path;
use std::time::Instant;

/// The keys of request `i`: 1,000 users, 100 IPs, one tenant.
fn keys(i: u64) -> [String; 3] {
    [
        format!("{{t:7}}:user:{}", i % 1_000),
        format!("{{t:7}}:ip:{}", i % 100),
        "{t:7}:tenant".to_string(),
    ]
}

/// Each key's (window, max).
const LIMITS: [[&str; 2]; 3] = [
    ["60000", "1000000"],
    ["60000", "1000000"],
    ["60000", "1000000000"],
];

/// How a row sends one request.
#[derive(Clone, Copy, PartialEq)]
enum Call {
    /// One RATELIMIT.MCHECK.
    Multi,
    /// A RATELIMIT.CHECK per key.
    Each,
    /// The Lua recipe, by EVALSHA.
    Recipe,
    /// One FCALL ratelimit_mcheck.
    TwinMulti,
    /// An FCALL ratelimit_check per key.
    TwinEach,
}

const ROWS: [(&str, Call); 5] = [
    ("MCHECK over 3 keys", Call::Multi),
    ("3 x CHECK", Call::Each),
    ("Lua recipe over 3 keys (3 PEEK + 3 CHECK)", Call::Recipe),
    ("twin MCHECK over 3 keys (FCALL)", Call::TwinMulti),
    ("3 x twin CHECK (FCALL)", Call::TwinEach),
];

/// The recipe MCHECK replaced, kept here as the comparison point.
const RECIPE: &str = include_str!("../lua/all_or_nothing.lua");

/// The commands whose server time is a row's: a script's time includes
/// the commands it calls, which commandstats also count on their own.
fn counted(call: Call) -> &'static [&'static str] {
    match call {
        Call::Multi => &["ratelimit.mcheck"],
        Call::Each => &["ratelimit.check"],
        Call::Recipe => &["evalsha"],
        Call::TwinMulti | Call::TwinEach => &["fcall"],
    }
}

/// One request over `keys` as `call` sends it (`sha`: the recipe's).
fn send(con: &mut redis::Connection, call: Call, keys: &[String; 3], sha: &str) {
    match call {
        Call::Multi | Call::TwinMulti => {
            let mut cmd = match call {
                Call::Multi => redis::cmd("RATELIMIT.MCHECK"),
                _ => redis::cmd("FCALL").arg("ratelimit_mcheck").clone(),
            };
            cmd.arg(3).arg(keys);
            for [window, max] in LIMITS {
                cmd.arg(1).arg(window).arg(max);
            }
            let (allowed, ..): (i64, i64, i64, i64, Vec<i64>) = cmd.query(con).expect("MCHECK");
            assert_eq!(allowed, 1, "every request is allowed");
        }
        Call::Each | Call::TwinEach => {
            for (key, [window, max]) in keys.iter().zip(LIMITS) {
                let mut cmd = match call {
                    Call::Each => redis::cmd("RATELIMIT.CHECK"),
                    _ => redis::cmd("FCALL").arg("ratelimit_check").arg(1).clone(),
                };
                let reply: Vec<i64> = cmd.arg(key).arg(window).arg(max).query(con).expect("CHECK");
                assert_eq!(reply[0], 1, "every request is allowed");
            }
        }
        Call::Recipe => {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(sha).arg(3).arg(keys);
            for [window, max] in LIMITS {
                cmd.arg(window).arg(max);
            }
            let reply: Vec<i64> = cmd.arg(1).query(con).expect("the Lua recipe");
            assert_eq!(reply[0], 1, "every request is allowed");
        }
    }
}

/// (label, server µs per request, wall µs per request).
pub fn run(bench: &Bench, requests: u64) -> Vec<(String, f64, f64)> {
    let mut con = bench.connect();
    let mut rows = Vec::new();
    for &(label, call) in &ROWS {
        measure::reset(&mut con);
        let sha: String = match call {
            Call::TwinMulti | Call::TwinEach => approaches::load_twin(&mut con),
            _ => redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(RECIPE)
                .query(&mut con)
                .expect("SCRIPT LOAD"),
        };
        let started = Instant::now();
        for i in 0..requests {
            send(&mut con, call, &keys(i), &sha);
        }
        let wall = started.elapsed().as_secs_f64() * 1e6 / requests as f64;
        let stats = measure::command_stats(&mut con);
        let server = measure::usec_per(&stats, counted(call), requests);
        eprintln!("  {label}: {server:.2} µs server CPU, {wall:.1} µs wall per request");
        rows.push((label.to_string(), server, wall));
    }
    eprintln!("  the memory of a blocked key:");
    let blocked = memory::blocked_against_open(bench);
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    if let Err(e) = memory::write_blocked(&blocked, &out) {
        eprintln!("cannot write block.csv: {e}");
    }
    rows
}

pub fn write(rows: &[(String, f64, f64)], requests: u64, dir: &Path) -> std::io::Result<()> {
    let mut csv = String::from("requests,call,server_usec_per_request,wall_usec_per_request\n");
    for (label, server, wall) in rows {
        csv.push_str(&format!("{requests},{label},{server:.2},{wall:.1}\n"));
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("multi.csv"), csv)
}
