//! One request against a user, an IP and a tenant limit: one
//! RATELIMIT.MCHECK over the three keys against three RATELIMIT.CHECKs,
//! and the same two with the script twin (FCALL ratelimit_mcheck against
//! three FCALL ratelimit_check), same keys, same limits (loose enough
//! that every request is allowed, so both record the same), same run. Server CPU per request from `INFO
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

/// How a row sends one request: one multi-key call or a CHECK per key,
/// to the module or to the script twin's function library.
struct Row {
    label: &'static str,
    multi: bool,
    twin: bool,
}

const ROWS: [Row; 4] = [
    Row {
        label: "MCHECK over 3 keys",
        multi: true,
        twin: false,
    },
    Row {
        label: "3 x CHECK",
        multi: false,
        twin: false,
    },
    Row {
        label: "twin MCHECK over 3 keys (FCALL)",
        multi: true,
        twin: true,
    },
    Row {
        label: "3 x twin CHECK (FCALL)",
        multi: false,
        twin: true,
    },
];

/// The command a row's call starts with: the module's, or FCALL of the
/// twin's function with FCALL's `numkeys` (the module's own for MCHECK).
fn command(row: &Row) -> redis::Cmd {
    match (row.twin, row.multi) {
        (false, true) => redis::cmd("RATELIMIT.MCHECK"),
        (false, false) => redis::cmd("RATELIMIT.CHECK"),
        (true, true) => redis::cmd("FCALL").arg("ratelimit_mcheck").clone(),
        (true, false) => redis::cmd("FCALL").arg("ratelimit_check").arg(1).clone(),
    }
}

/// (label, server µs per request, wall µs per request).
pub fn run(bench: &Bench, requests: u64) -> Vec<(String, f64, f64)> {
    let mut con = bench.connect();
    let mut rows = Vec::new();
    for row in &ROWS {
        measure::reset(&mut con);
        if row.twin {
            approaches::load_twin(&mut con);
        }
        let started = Instant::now();
        for i in 0..requests {
            let keys = keys(i);
            if row.multi {
                let mut call = command(row);
                call.arg(3).arg(&keys);
                for [window, max] in LIMITS {
                    call.arg(1).arg(window).arg(max);
                }
                let (allowed, ..): (i64, i64, i64, i64, Vec<i64>) =
                    call.query(&mut con).expect("MCHECK");
                assert_eq!(allowed, 1, "every request is allowed");
            } else {
                for (key, [window, max]) in keys.iter().zip(LIMITS) {
                    let reply: Vec<i64> = command(row)
                        .arg(key)
                        .arg(window)
                        .arg(max)
                        .query(&mut con)
                        .expect("CHECK");
                    assert_eq!(reply[0], 1, "every request is allowed");
                }
            }
        }
        let wall = started.elapsed().as_secs_f64() * 1e6 / requests as f64;
        let stats = measure::command_stats(&mut con);
        let counted = ["ratelimit.mcheck", "ratelimit.check", "fcall"];
        let server = measure::usec_per(&stats, &counted, requests);
        eprintln!(
            "  {}: {server:.2} µs server CPU, {wall:.1} µs wall per request",
            row.label
        );
        rows.push((row.label.to_string(), server, wall));
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
