//! The worst case of one call (issue 19, finding 7): a key whose log holds
//! `size` unit entries 1 ms apart under a one-hour window (restored from a
//! crafted payload: CHECK adds at most one entry per millisecond), and the
//! calls that read the most of it. Server CPU per call from
//! `INFO commandstats`; written to bench/results/worst.csv.

use crate::measure;
use crate::Bench;
use harness::{log_payload, restore, server_clock_ms};
use std::path::Path;

/// (label, the words after the key, calls measured); a label starting
/// with CHECK is sent as CHECK, the others as PEEK.
const CALLS: [(&str, &[&str], u64); 5] = [
    // A shorter window that is not full: every entry in it is read.
    ("PEEK 30 min window not full", &["1800000", "2000000"], 20),
    // A shorter window already full: reading stops at max.
    ("PEEK 10 min window full at 10", &["600000", "10"], 200),
    // The log's own window, full: the wait is found after COST entries.
    (
        "PEEK 1 h window COST 500000 denied",
        &["3600000", "1000000", "COST", "500000"],
        20,
    ),
    // The log's own window with room: the cost sum answers, O(1).
    ("PEEK 1 h window with room", &["3600000", "2000000"], 200),
    (
        "CHECK 10 min window full at 10 (denied)",
        &["600000", "10"],
        200,
    ),
];

pub fn run(bench: &Bench, size: u64) -> Vec<(String, f64)> {
    let mut con = bench.connect();
    measure::reset(&mut con);
    let newest = server_clock_ms(&mut con) - 1000;
    let entries: Vec<(i64, u64)> = (0..size as i64)
        .map(|i| (newest - size as i64 + 1 + i, 1))
        .collect();
    let payload = log_payload(&mut con, 3_600_000, &entries);
    restore(&mut con, "big", &payload).expect("RESTORE of a crafted log");
    let mut rows = Vec::new();
    for (label, words, calls) in CALLS {
        let command = if label.starts_with("CHECK") {
            "RATELIMIT.CHECK"
        } else {
            "RATELIMIT.PEEK"
        };
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query::<()>(&mut con)
            .expect("RESETSTAT");
        for _ in 0..calls {
            redis::cmd(command)
                .arg("big")
                .arg(words)
                .query::<Vec<i64>>(&mut con)
                .expect(label);
        }
        let stats = measure::command_stats(&mut con);
        let usec = measure::usec_per(&stats, &[command.to_lowercase()], calls);
        eprintln!("  {size} entries; {label}: {usec:.1} µs");
        rows.push((label.to_string(), usec));
    }
    rows
}

pub fn write(rows: &[(String, f64)], size: u64, dir: &Path) -> std::io::Result<()> {
    let mut csv = String::from("entries,call,server_usec_per_call\n");
    for (label, usec) in rows {
        csv.push_str(&format!("{size},{label},{usec:.1}\n"));
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("worst.csv"), csv)
}
