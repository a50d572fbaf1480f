//! Weighted requests and hot keys: what a request costs, in server CPU and
//! in memory, as its COST grows; and what PRECISION saves on a key that
//! takes thousands of requests a second.

use crate::measure;
use crate::Bench;
use redis::Connection;
use std::time::{Duration, Instant};

/// A budget no row reaches, so that every CHECK is allowed and recorded.
const BUDGET: u64 = 1_000_000_000_000_000;
const WINDOW_MS: u64 = 60_000;

#[derive(Clone, Copy, Debug)]
pub struct CostRow {
    pub cost: u64,
    pub keys: u64,
    pub requests_per_key: u64,
    /// Server µs per CHECK, from `INFO commandstats`.
    pub usec: f64,
    /// `used_memory` growth per request.
    pub bytes_per_request: f64,
    /// `MEMORY USAGE` of one key over its requests.
    pub memory_usage_per_request: f64,
    /// What each request after the first adds to a key's `MEMORY USAGE`:
    /// the log's own bytes per request on a busy key.
    pub log_bytes_per_request: f64,
}

/// `keys` keys take `requests` CHECKs each at COST `cost`, a pass over
/// every key at a time with a pause between passes, so that each request
/// is its own entry, as on a key busy with separate callers.
pub fn cost_row(bench: &Bench, cost: u64, keys: u64, requests: u64) -> CostRow {
    let mut con = bench.connect();
    measure::reset(&mut con);
    let before = measure::used_memory(&mut con);
    for _ in 0..requests {
        let mut pipe = redis::pipe();
        for key in 0..keys {
            pipe.cmd("RATELIMIT.CHECK")
                .arg(format!("w:{key}"))
                .arg(WINDOW_MS)
                .arg(BUDGET)
                .arg("COST")
                .arg(cost)
                .ignore();
        }
        pipe.query::<()>(&mut con).expect("weighted CHECKs");
        std::thread::sleep(Duration::from_millis(2));
    }
    let growth = (measure::used_memory(&mut con) - before) as f64;
    let stats = measure::command_stats(&mut con);
    let calls = measure::calls(&stats, "ratelimit.check");
    assert_eq!(calls, keys * requests, "every CHECK ran");
    let usage = memory_usage(&mut con, "w:0");
    redis::cmd("RATELIMIT.CHECK")
        .arg("x:0")
        .arg(WINDOW_MS)
        .arg(BUDGET)
        .arg("COST")
        .arg(cost)
        .query::<()>(&mut con)
        .expect("CHECK");
    let one_request = memory_usage(&mut con, "x:0");
    let row = CostRow {
        cost,
        keys,
        requests_per_key: requests,
        usec: measure::usec_per(&stats, &["ratelimit.check"], calls),
        bytes_per_request: growth / (keys * requests) as f64,
        memory_usage_per_request: usage as f64 / requests as f64,
        log_bytes_per_request: (usage - one_request) as f64 / (requests - 1) as f64,
    };
    eprintln!(
        "  COST {cost:>10}: {:.2} µs/CHECK, {:.2} B/request, MEMORY USAGE {:.2} B/request, log {:.2} B/request",
        row.usec, row.bytes_per_request, row.memory_usage_per_request, row.log_bytes_per_request
    );
    row
}

fn memory_usage(con: &mut Connection, key: &str) -> i64 {
    redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(key)
        .query(con)
        .expect("MEMORY USAGE")
}

#[derive(Clone, Debug)]
pub struct HotRow {
    pub precision: Option<u64>,
    pub seconds: f64,
    pub requests: u64,
    pub memory_usage: i64,
}

/// One key with a one-hour window takes CHECKs as fast as one pipelined
/// connection sends them, for `duration`; then its `MEMORY USAGE`.
pub fn hot_key(bench: &Bench, precision: Option<u64>, duration: Duration) -> HotRow {
    let mut con = bench.connect();
    measure::reset(&mut con);
    let started = Instant::now();
    let mut requests = 0;
    while started.elapsed() < duration {
        send_hot_batch(&mut con, precision);
        requests += HOT_BATCH;
    }
    let seconds = started.elapsed().as_secs_f64();
    let memory_usage = memory_usage(&mut con, "hot");
    let label = precision.map_or("exact".to_string(), |p| format!("PRECISION {p}"));
    eprintln!(
        "  hot key, {label}: {requests} requests in {seconds:.1} s, MEMORY USAGE {memory_usage} B"
    );
    HotRow {
        precision,
        seconds,
        requests,
        memory_usage,
    }
}

const HOT_BATCH: u64 = 200;

fn send_hot_batch(con: &mut Connection, precision: Option<u64>) {
    let mut pipe = redis::pipe();
    for _ in 0..HOT_BATCH {
        let call = pipe
            .cmd("RATELIMIT.CHECK")
            .arg("hot")
            .arg(3_600_000)
            .arg(BUDGET);
        if let Some(p) = precision {
            call.arg("PRECISION").arg(p);
        }
        call.ignore();
    }
    pipe.query::<()>(con).expect("hot CHECKs");
}
